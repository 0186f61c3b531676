"""YOLOv5-compatible ONNX metadata plus clo-export's own keys, and the sidecar JSON beside a model.

YOLOv5's export writes ``metadata_props`` ``stride`` (``str(int)``) and ``names`` (``str(dict)``,
e.g. ``"{0: 'person', 1: 'bicycle'}"``); its ``detect.py``/``val.py`` read them back, so we write
them the same way. Everything else goes under ``clo_export.`` keys. Reading parses ``names`` with
``ast.literal_eval`` (literals only) and accepts a plain YOLOv5 ONNX that has only stride and names.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from clo_export import __version__
from clo_export.errors import CloExportError
from clo_export.fileio import sidecar_path as fileio_sidecar_path

PREFIX = "clo_export."


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
        """Inverse of `to_dict` (reads a sidecar JSON)."""
        d = dict(d)
        d["names"] = {int(k): v for k, v in d["names"].items()}
        d["imgsz"] = tuple(d["imgsz"]) if d.get("imgsz") else None
        return cls(**d)


def sidecar_path(onnx_path: str | os.PathLike) -> Path:
    """The sidecar JSON beside a model: best.onnx -> best.onnx.json (the engine's rule; see clo_export.fileio)."""
    return fileio_sidecar_path(onnx_path)


def _opset(model: onnx.ModelProto) -> int | None:
    """The default-domain opset version, or None."""
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _props(meta: ModelMeta, model: onnx.ModelProto) -> dict[str, str]:
    """The metadata_props to write, in YOLOv5's string forms for stride and names."""
    props = {"stride": str(int(meta.stride)), "names": str({int(k): str(v) for k, v in meta.names.items()})}
    ours: dict[str, Any] = {
        "imgsz": json.dumps(list(meta.imgsz)) if meta.imgsz else None,
        "nc": meta.nc if meta.nc is not None else len(meta.names),
        "anchors": json.dumps(meta.anchors) if meta.anchors is not None else None,
        "source_sha256": meta.source_sha256,
        "opset": meta.opset if meta.opset is not None else _opset(model),
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
    kept = {p.key: p.value for p in model.metadata_props if p.key not in ("stride", "names") and not p.key.startswith(PREFIX)}
    onnx.helper.set_model_props(model, {**kept, **_props(meta, model)})


def _input_dims(model: onnx.ModelProto) -> list[onnx.TensorShapeProto.Dimension]:
    """Dims of the first real graph input (initializers excluded)."""
    initializers = {t.name for t in model.graph.initializer}
    inp = next((i for i in model.graph.input if i.name not in initializers), None)
    return list(inp.type.tensor_type.shape.dim) if inp is not None else []


def _input_precision(model: onnx.ModelProto) -> str | None:
    """'fp16' for a model whose image input is FP16 (YOLOv5's export.py --half writes no precision), else None."""
    initializers = {t.name for t in model.graph.initializer}
    inp = next((i for i in model.graph.input if i.name not in initializers), None)
    return "fp16" if inp is not None and inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16 else None


def _parse_names(text: str) -> dict[int, str]:
    """YOLOv5's names string (a dict, or a list in old exports) as {int: str}, literals only."""
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as e:
        raise CloExportError(f"ONNX metadata 'names' is not a Python literal ({text[:60]!r}); re-export with clo-export onnx") from e
    if isinstance(value, (list, tuple)):
        value = dict(enumerate(value))
    if not isinstance(value, dict):
        raise CloExportError(f"ONNX metadata 'names' must be a dict or list, got {type(value).__name__}; re-export with clo-export onnx")
    if not value or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in value):
        raise CloExportError(f"ONNX metadata 'names' must map class ids 0, 1, … to names ({text[:60]!r}); "
                             "re-export with clo-export onnx")
    return {int(k): str(v) for k, v in value.items()}


def _bad(key: str, value: str, want: str) -> CloExportError:
    return CloExportError(f"ONNX metadata '{key}' is {value[:60]!r}, not {want}; the file was edited or damaged: "
                          "re-export it with clo-export onnx")


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
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and 0 < x <= 1 << 15 for x in v)


def _is_anchors(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(lv, list) and all(isinstance(a, (int, float)) and not isinstance(a, bool)
                                                                    for a in lv) for lv in v)


def load_onnx(path: str | os.PathLike, load_external_data: bool = True) -> onnx.ModelProto:
    """``onnx.load`` with one-line errors for a missing, truncated or non-ONNX file."""
    path = Path(path)
    if not path.is_file():
        raise CloExportError(f"model '{path}' does not exist{' (it is a folder)' if path.is_dir() else ''}; "
                             "export one with clo-export onnx")
    try:
        model = onnx.load(os.fspath(path), load_external_data=load_external_data)
    except Exception as e:  # DecodeError, RuntimeError, OSError: all mean the same to the user
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CloExportError(f"'{path}' is not a readable ONNX model ({first}); the file is truncated or of another "
                             "format: export it again with clo-export onnx") from e
    if not model.graph.node:
        raise CloExportError(f"'{path}' holds no ONNX graph (empty or another format); export it again with clo-export onnx")
    return model


def read_metadata(model_or_path: onnx.ModelProto | str | os.PathLike) -> ModelMeta:
    """Parse metadata written by `write_metadata` or by YOLOv5's export (stride and names only)."""
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        model = load_onnx(model_or_path, load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "stride" not in props or "names" not in props:
        raise CloExportError("ONNX model has no YOLOv5 metadata (stride, names); export it with clo-export onnx or YOLOv5's export.py")
    ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
    names = _parse_names(props["names"])
    dims = _input_dims(model)
    imgsz = _json(ours, "imgsz", _is_size, "[height, width] of positive integers")
    if imgsz is not None:
        imgsz = tuple(imgsz)
    elif len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]) and min(dims[2].dim_value, dims[3].dim_value) > 0:
        imgsz = (dims[2].dim_value, dims[3].dim_value)
    dynamic = _json(ours, "dynamic_batch", lambda v: isinstance(v, bool), "true or false")
    if dynamic is None:
        dynamic = bool(dims and not dims[0].HasField("dim_value"))
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
        opset=_number(ours, "opset", int, 1, 1000) if "opset" in ours else _opset(model),
        precision=_precision(ours.get("precision")) or _input_precision(model),
        version=ours.get("version"),
        nms=bool(_json(ours, "nms", lambda v: isinstance(v, bool), "true or false")),
        nms_conf=_number(ours, "nms_conf", float, 0, 1),
        nms_iou=_number(ours, "nms_iou", float, 0, 1),
        nms_max_det=_number(ours, "nms_max_det", int, 1, 1 << 20),
        dynamic_batch=bool(dynamic),
    )
