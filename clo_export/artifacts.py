"""What a model file says about itself: ONNX facts, YOLOv5 metadata, typed sidecars, the rebuild hint.

* the default-domain opset and the real graph inputs (initializers excluded) of an ONNX graph;
* YOLOv5-compatible ONNX metadata plus clo-export's own keys (:class:`ModelMeta`). YOLOv5's export
  writes ``metadata_props`` ``stride`` (``str(int)``) and ``names`` (``str(dict)``, e.g.
  ``"{0: 'person', 1: 'bicycle'}"``); its ``detect.py``/``val.py`` read them back, so we write them
  the same way. Everything else goes under ``clo_export.`` keys. Reading parses ``names`` with
  ``ast.literal_eval`` (literals only) and accepts a plain YOLOv5 ONNX that has only stride and names;
* typed sidecars (:class:`Sidecar`): ``<artifact>.json`` beside every artifact (``best.onnx.json``,
  ``best.engine.json``), one reader and one writer (:func:`clo_export.fileio.write_sidecar`: the
  marker key ``clo_export_version``, never over a file clo-export did not write);
* :class:`ModelInfo`, what inference needs to know about a model, and :func:`check_contract`, which refuses
  an artifact whose classes, stride or input size are not its checkpoint's;
* the command that rebuilds an engine.

This module sits low: it imports no backend, no exporter and no torch, and onnx only when asked to.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Optional, TypeVar

from clo_export import __version__
from clo_export.errors import CloExportError
from clo_export.fileio import PathLike, is_stream, sidecar_path, write_sidecar

if TYPE_CHECKING:
    import onnx

PREFIX = "clo_export."  # our ONNX metadata_props keys
REEXPORT = "re-export it with clo-export onnx"
_PRECISION_FLAG = {"fp32": "", "fp16": " --fp16", "int8": " --int8"}
S = TypeVar("S", bound="Sidecar")


# ------------------------------------------------------------------------------------------- ONNX graph


def load_onnx(path: PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """``onnx.load`` with one-line errors for a missing, truncated or non-ONNX file."""
    from clo_export.lazy import lazy_import

    onnx = lazy_import("onnx")
    path = Path(path)
    if not path.is_file():
        raise CloExportError(
            f"model '{path}' does not exist{' (it is a folder)' if path.is_dir() else ''}; "
            "export one with clo-export onnx"
        )
    try:
        model = onnx.load(os.fspath(path), load_external_data=load_external_data)
    except Exception as e:  # DecodeError, RuntimeError, OSError: all mean the same to the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CloExportError(
            f"'{path}' is not a readable ONNX model ({first}); the file is truncated or of another "
            "format: export it again with clo-export onnx"
        ) from e
    if not model.graph.node:
        raise CloExportError(
            f"'{path}' holds no ONNX graph (empty or another format); export it again with clo-export onnx"
        )
    return model


def opset_of(model: onnx.ModelProto) -> int | None:
    """The default-domain (``ai.onnx``) opset version, None when the model imports none."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def graph_inputs(model: onnx.ModelProto | onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    """The inputs a caller feeds (of a model or a graph): initializers listed as inputs (IR < 4) excluded."""
    graph = getattr(model, "graph", model)
    initializers = {t.name for t in graph.initializer}
    return [i for i in graph.input if i.name not in initializers]


def graph_input(model: onnx.ModelProto) -> onnx.ValueInfoProto | None:
    """The first real graph input (the image), None for a graph without one."""
    return next(iter(graph_inputs(model)), None)


def dims_of(value_info: onnx.ValueInfoProto) -> tuple[int, ...]:
    """A tensor's shape as ints, -1 for a symbolic dimension."""
    return tuple(d.dim_value if d.HasField("dim_value") else -1 for d in value_info.type.tensor_type.shape.dim)


# -------------------------------------------------------------------------------------- ONNX metadata


@dataclass
class ModelMeta:
    """What a deployed model needs to be used correctly: classes, stride, input size, provenance."""

    stride: int
    names: dict[int, str]
    imgsz: tuple[int, int] | None = None  # (H, W)
    nc: int | None = None
    anchors: list[list[float]] | None = None  # per level, pixels: [[w0, h0, w1, h1, ...], ...]
    source_sha256: str | None = None
    opset: int | None = None
    precision: str | None = None  # "fp32" | "fp16" | "int8"
    version: str | None = None  # clo-export version that wrote the model
    nms: bool = False
    nms_conf: float | None = None
    nms_iou: float | None = None
    nms_max_det: int | None = None
    dynamic_batch: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the sidecar): names keyed by str, imgsz as a list."""
        d = asdict(self)
        d["names"] = {str(k): v for k, v in self.names.items()}
        d["imgsz"] = list(self.imgsz) if self.imgsz else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelMeta:
        """Inverse of `to_dict`; keys it does not know are ignored."""
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}
        d["names"] = {int(k): v for k, v in d["names"].items()}
        d["imgsz"] = tuple(d["imgsz"]) if d.get("imgsz") else None
        return cls(**d)


def _props(meta: ModelMeta, model: onnx.ModelProto) -> dict[str, str]:
    """The metadata_props to write, in YOLOv5's string forms for stride and names."""
    props = {"stride": str(int(meta.stride)), "names": str({int(k): str(v) for k, v in meta.names.items()})}
    ours: dict[str, Any] = {
        "imgsz": json.dumps(list(meta.imgsz)) if meta.imgsz else None,
        "nc": meta.nc if meta.nc is not None else len(meta.names),
        "anchors": json.dumps(meta.anchors) if meta.anchors is not None else None,
        "source_sha256": meta.source_sha256,
        "opset": meta.opset if meta.opset is not None else opset_of(model),
        "precision": meta.precision,
        "version": meta.version or __version__,
        "nms": json.dumps(bool(meta.nms)),
        "nms_conf": meta.nms_conf,
        "nms_iou": meta.nms_iou,
        "nms_max_det": meta.nms_max_det,
        "dynamic_batch": json.dumps(bool(meta.dynamic_batch)),
    }
    props.update({PREFIX + k: str(v) for k, v in ours.items() if v is not None})
    return props


def write_metadata(model: onnx.ModelProto, meta: ModelMeta) -> None:
    """Set YOLOv5's stride/names and our clo_export.* keys on `model` (in place, replacing old ones)."""
    import onnx

    kept = {
        p.key: p.value
        for p in model.metadata_props
        if p.key not in ("stride", "names") and not p.key.startswith(PREFIX)
    }
    onnx.helper.set_model_props(model, {**kept, **_props(meta, model)})


def _parse_names(text: str) -> dict[int, str]:
    """YOLOv5's names string (a dict, or a list in old exports) as {int: str}, literals only."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise CloExportError(f"ONNX metadata 'names' is not a Python literal ({text[:60]!r}); {REEXPORT}") from e
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise CloExportError(f"ONNX metadata 'names' must be a dict or list, got {type(value).__name__}; {REEXPORT}")
    if not value or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in value):
        raise CloExportError(f"ONNX metadata 'names' must map class ids 0, 1, … to names ({text[:60]!r}); {REEXPORT}")
    return {int(k): str(v) for k, v in value.items()}


def _bad(key: str, value: str, want: str) -> CloExportError:
    return CloExportError(
        f"ONNX metadata '{key}' is {value[:60]!r}, not {want}; the file was edited or damaged: {REEXPORT}"
    )


def _number(props: dict[str, str], key: str, kind: type, low: float | None = None, high: float | None = None) -> Any:
    """A numeric metadata value of ``kind`` within [low, high], None when absent, CloExportError when malformed."""
    if key not in props:
        return None
    text = props[key]
    try:
        value = float(text)
        if kind is int:
            if value != int(value):
                raise ValueError(text)
            value = int(value)
    except (ValueError, OverflowError):
        raise _bad(key, text, f"a{'n integer' if kind is int else ' number'}") from None
    if value != value or (low is not None and value < low) or (high is not None and value > high):
        raise _bad(key, text, f"a number in [{low}, {high}]")
    return value


def _json(props: dict[str, str], key: str, check: Any, want: str) -> Any:
    """A JSON metadata value that passes ``check``, None when absent, CloExportError when malformed."""
    if key not in props:
        return None
    try:
        value = json.loads(props[key])
    except ValueError:
        raise _bad(key, props[key], want) from None
    if not check(value):
        raise _bad(key, props[key], want)
    return value


def _precision(value: str | None) -> str | None:
    if value not in (None, "fp32", "fp16", "int8"):
        raise _bad("precision", value, "fp32, fp16 or int8")
    return value


def _is_size(v: Any) -> bool:
    return (
        isinstance(v, list)
        and len(v) == 2
        and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 1 << 15 for x in v)
    )


def _is_anchors(v: Any) -> bool:
    return isinstance(v, list) and all(
        isinstance(lv, list) and all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in lv) for lv in v
    )


def input_precision(model: onnx.ModelProto) -> str | None:
    """'fp16' for a model whose image input is FP16 (YOLOv5's export.py --half writes no precision), else None."""
    import onnx

    inp = graph_input(model)
    return "fp16" if inp is not None and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else None


def read_metadata(model_or_path: Any) -> ModelMeta:
    """Parse metadata written by `write_metadata` or by YOLOv5's export (stride and names only).

    Takes an ``onnx.ModelProto`` or a path (read without external weights).
    """
    model = (
        load_onnx(model_or_path, load_external_data=False)
        if isinstance(model_or_path, (str, os.PathLike))
        else model_or_path
    )
    props = {p.key: p.value for p in model.metadata_props}
    if "stride" not in props or "names" not in props:
        raise CloExportError(
            "ONNX model has no YOLOv5 metadata (stride, names); export it with clo-export onnx or YOLOv5's export.py"
        )
    ours = {k[len(PREFIX) :]: v for k, v in props.items() if k.startswith(PREFIX)}
    names = _parse_names(props["names"])
    inp = graph_input(model)
    dims = dims_of(inp) if inp is not None else ()
    imgsz = _json(ours, "imgsz", _is_size, "[height, width] of positive integers")
    if imgsz is not None:
        imgsz = tuple(imgsz)
    elif len(dims) == 4 and min(dims[2:]) > 0:
        imgsz = (dims[2], dims[3])
    dynamic = _json(ours, "dynamic_batch", lambda v: isinstance(v, bool), "true or false")
    if dynamic is None:
        dynamic = bool(dims) and dims[0] < 0
    nc = _number(ours, "nc", int, 1, 1 << 20)
    if nc is not None and nc != len(names):
        raise _bad("nc", ours["nc"], f"the {len(names)} classes in 'names'")
    return ModelMeta(
        stride=_number(props, "stride", int, 1, 1 << 12),
        names=names,
        imgsz=imgsz,
        nc=len(names) if nc is None else nc,
        anchors=_json(ours, "anchors", _is_anchors, "a list of anchor lists"),
        source_sha256=ours.get("source_sha256"),
        opset=_number(ours, "opset", int, 1, 1000) if "opset" in ours else opset_of(model),
        precision=_precision(ours.get("precision")) or input_precision(model),
        version=ours.get("version"),
        nms=bool(_json(ours, "nms", lambda v: isinstance(v, bool), "true or false")),
        nms_conf=_number(ours, "nms_conf", float, 0, 1),
        nms_iou=_number(ours, "nms_iou", float, 0, 1),
        nms_max_det=_number(ours, "nms_max_det", int, 1, 1 << 20),
        dynamic_batch=bool(dynamic),
    )


# -------------------------------------------------------------------------------------------- sidecars


def rebuild_command(source_onnx: str | None = None, precision: str | None = None) -> str:
    """The command that builds an engine again: ``clo-export trt best.onnx --fp16`` (MODEL.onnx when unknown)."""
    return f"clo-export trt {source_onnx or 'MODEL.onnx'}{_PRECISION_FLAG.get(precision or 'fp32', '')}"


class Sidecar:
    """A typed ``<artifact>.json``: subclasses are dataclasses with ``to_dict``/``from_dict``.

    :meth:`write` goes through :func:`clo_export.fileio.write_sidecar` (atomic, marker key, never over
    a file clo-export did not write); :meth:`read` turns a missing or unreadable file into one line
    that says how to make the artifact again (``fix``).
    """

    missing: ClassVar[str] = "so this artifact's facts are unknown"  # "{path} is missing, {missing}; {fix}"
    fix: ClassVar[str] = REEXPORT

    def to_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_dict(cls: type[S], data: dict[str, Any]) -> S:
        raise NotImplementedError

    def write(self, artifact: PathLike) -> Optional[Path]:
        """Write ``ARTIFACT.json`` atomically and return its path (None: the artifact went to a device or pipe)."""
        return None if is_stream(artifact) else write_sidecar(sidecar_path(artifact), self.to_dict())

    @classmethod
    def read(cls: type[S], artifact: PathLike) -> S:
        """The sidecar of ``artifact``; a missing, unreadable or incomplete one names the fix."""
        path = sidecar_path(artifact)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CloExportError(f"{path} is missing, {cls.missing}; {cls.fix}") from None
        except (OSError, ValueError) as e:
            raise CloExportError(f"cannot read {path} ({e}); {cls.fix}") from e
        if not isinstance(data, dict):
            raise CloExportError(f"{path} is not a JSON object; {cls.fix}")
        return cls.from_dict(data)


@dataclass(frozen=True)
class OnnxSidecar(Sidecar):
    """``MODEL.onnx.json``: the model's metadata (flat, as in the ONNX) and how the file was made.

    ``clo-export onnx`` records the export time and its parity Report; ``clo-export quantize`` the
    calibration, the nodes kept in float, the Q/DQ counts and the accuracy summary. A field that is
    None is not written.
    """

    missing: ClassVar[str] = "so how this model was made is unknown"
    fix: ClassVar[str] = REEXPORT

    meta: ModelMeta
    onnx: str  # the model's file name
    source: str  # the file it was made from (.pt checkpoint, or the FP32 .onnx for a quantized one)
    export_seconds: float | None = None
    parity: dict[str, Any] | None = None  # compare.Report.to_dict() of the export's check
    graph_parity: dict[str, Any] | None = None  # --half: the FP32 graph's check before the FP16 conversion
    calibration: dict[str, Any] | None = None
    float_nodes: list[str] | None = None
    qdq: dict[str, Any] | None = None
    accuracy: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        extra = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "meta"}
        return {**self.meta.to_dict(), **{k: v for k, v in extra.items() if v is not None}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> OnnxSidecar:
        """From the parsed JSON of any clo-export version: unknown keys are ignored, missing extras are None."""
        if not isinstance(data.get("names"), dict) or "stride" not in data:
            raise CloExportError(f"ONNX sidecar for {data.get('onnx', 'a model')} has no stride and names; {REEXPORT}")
        extra = {f.name: data.get(f.name) for f in fields(cls) if f.name != "meta"}
        extra["onnx"], extra["source"] = str(data.get("onnx", "")), str(data.get("source", ""))
        return cls(meta=ModelMeta.from_dict(data), **extra)


# ------------------------------------------------------------------------------------------ model info


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a model, read from the file itself (metadata or sidecar)."""

    path: str
    backend: str  # "pytorch" | "onnxruntime" | "tensorrt" | "triton"
    names: dict[int, str]
    imgsz: tuple[int, int]  # (H, W) the model takes
    stride: int = 32
    precision: str = "fp32"
    nms: bool = False  # in-graph NMS: outputs num_dets, boxes, scores, classes
    nms_conf: float | None = None
    nms_iou: float | None = None
    nms_max_det: int | None = None

    def class_name(self, cls: int) -> str:
        """The class name, or the id as text for an unnamed class."""
        return self.names.get(int(cls), str(int(cls)))


def check_contract(artifact: ModelInfo, checkpoint: ModelInfo) -> None:
    """Refuse an artifact that is not its checkpoint's model: number of classes, class names, stride, input size.

    The input size is also the letterbox target; the rest of the letterbox (114 padding, centred,
    scale-up) is clo-export's one preprocessing function, recorded nowhere per model. Raises
    CloExportError in one line naming the first field that differs and both values.
    """
    a, c = Path(artifact.path).name, Path(checkpoint.path).name
    if len(artifact.names) != len(checkpoint.names):
        raise CloExportError(
            f"number of classes differs: {a} has {len(artifact.names)}, {c} has "
            f"{len(checkpoint.names)}; check against the checkpoint the model was exported from"
        )
    wrong = [k for k in sorted(checkpoint.names) if artifact.names.get(k) != checkpoint.names[k]]
    if wrong:
        k = wrong[0]
        raise CloExportError(
            f"class names differ: class {k} is {artifact.names.get(k)!r} in {a} but "
            f"{checkpoint.names[k]!r} in {c} ({len(wrong)} of {len(checkpoint.names)} names differ); "
            "check against the checkpoint the model was exported from"
        )
    if int(artifact.stride) != int(checkpoint.stride):
        raise CloExportError(
            f"stride differs: {a} has {artifact.stride}, {c} has {checkpoint.stride}; "
            "check against the checkpoint the model was exported from"
        )
    if tuple(artifact.imgsz) != tuple(checkpoint.imgsz):
        (h, w), (ch, cw) = artifact.imgsz, checkpoint.imgsz
        raise CloExportError(
            f"input size differs: {a} takes {h}x{w}, {c} runs at {ch}x{cw} (its training size, or "
            f"--imgsz); re-export at {ch},{cw}, or pass --imgsz {h},{w} if {h}x{w} was meant"
        )
