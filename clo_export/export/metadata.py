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
    """The sidecar JSON beside a model: best.onnx -> best.json."""
    return Path(onnx_path).with_suffix(".json")


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
    return {int(k): str(v) for k, v in value.items()}


def read_metadata(model_or_path: onnx.ModelProto | str | os.PathLike) -> ModelMeta:
    """Parse metadata written by `write_metadata` or by YOLOv5's export (stride and names only)."""
    if isinstance(model_or_path, onnx.ModelProto):
        model = model_or_path
    else:
        model = onnx.load(os.fspath(model_or_path), load_external_data=False)
    props = {p.key: p.value for p in model.metadata_props}
    if "stride" not in props or "names" not in props:
        raise CloExportError("ONNX model has no YOLOv5 metadata (stride, names); export it with clo-export onnx or YOLOv5's export.py")
    ours = {k[len(PREFIX):]: v for k, v in props.items() if k.startswith(PREFIX)}
    names = _parse_names(props["names"])
    dims = _input_dims(model)

    def number(key: str, kind: type) -> Any:
        return kind(ours[key]) if key in ours else None

    if "imgsz" in ours:
        imgsz = tuple(json.loads(ours["imgsz"]))
    elif len(dims) == 4 and all(d.HasField("dim_value") for d in dims[2:]):
        imgsz = (dims[2].dim_value, dims[3].dim_value)
    else:
        imgsz = None
    dynamic = json.loads(ours["dynamic_batch"]) if "dynamic_batch" in ours else bool(dims and not dims[0].HasField("dim_value"))
    return ModelMeta(
        stride=int(float(props["stride"])),
        names=names,
        imgsz=imgsz,
        nc=number("nc", int) if "nc" in ours else len(names),
        anchors=json.loads(ours["anchors"]) if "anchors" in ours else None,
        source_sha256=ours.get("source_sha256"),
        opset=number("opset", int) if "opset" in ours else _opset(model),
        precision=ours.get("precision") or _input_precision(model),
        version=ours.get("version"),
        nms=json.loads(ours.get("nms", "false")),
        nms_conf=number("nms_conf", float),
        nms_iou=number("nms_iou", float),
        nms_max_det=number("nms_max_det", int),
        dynamic_batch=bool(dynamic),
    )
