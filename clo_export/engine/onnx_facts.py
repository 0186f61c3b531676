"""The ONNX an engine is built from: its facts (input, Q/DQ, FP16), the engine's default path, the FP16 variant."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from clo_export.artifacts import (
    ModelMeta,
    dims_of,
    graph_input,
    graph_inputs,
    input_precision,
    read_metadata,
    write_metadata,
)
from clo_export.backends.base import TensorSpec
from clo_export.backends.onnxrt import check_detector_inputs
from clo_export.engine.plan import BuildRequest
from clo_export.errors import CloExportError


@dataclass(frozen=True)
class OnnxFacts:
    """What the plan needs to know about the input ONNX."""

    meta: ModelMeta
    input_name: str
    input_shape: tuple[int, ...]  # -1 for a symbolic dimension
    output_names: tuple[str, ...]
    is_qdq: bool
    is_fp16: bool

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.input_shape) and self.input_shape[0] < 0

    @property
    def imgsz(self) -> tuple[int, int]:
        return tuple(self.meta.imgsz) if self.meta.imgsz else tuple(self.input_shape[2:4])


def input_specs(model: Any) -> list[TensorSpec]:
    """The graph's real inputs as TensorSpecs (None for a symbolic dimension), as a runner would report them."""
    from onnx.helper import tensor_dtype_to_np_dtype

    return [
        TensorSpec(
            i.name,
            tuple(None if d < 0 else d for d in dims_of(i)),
            np.dtype(tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)),
        )
        for i in graph_inputs(model)
    ]


def onnx_facts(model: Any, name: str = "model") -> OnnxFacts:
    """Metadata, first input, and whether the graph holds Q/DQ nodes or FP16 I/O."""
    meta = read_metadata(model)
    inp = graph_input(model)
    if inp is None:
        raise CloExportError(f"'{name}' has no graph input; re-export it with clo-export onnx")
    check_detector_inputs(input_specs(model), f"'{name}'")
    dims = dims_of(inp)
    if len(dims) == 4 and min(dims[2:]) < 0:
        raise CloExportError(
            f"'{name}' has a dynamic input height/width (a --dynamic export); engines are built for "
            "one size: export a fixed-size ONNX (YOLOv5 export.py without --dynamic, or clo-export onnx --imgsz H,W)"
        )
    is_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    is_fp16 = meta.precision == "fp16" or input_precision(model) == "fp16"
    return OnnxFacts(meta, inp.name, dims, tuple(o.name for o in model.graph.output), is_qdq, is_fp16)


def with_facts(request: BuildRequest, facts: OnnxFacts, calib: Sequence[str] = ()) -> BuildRequest:
    """The user's request completed with what the ONNX is (the plan decides from both)."""
    return dataclasses.replace(
        request,
        is_qdq=facts.is_qdq,
        is_fp16=facts.is_fp16,
        dynamic_batch=facts.dynamic_batch,
        input_name=facts.input_name,
        input_shape=facts.input_shape,
        has_calib=bool(calib) or request.has_calib,
    )


def default_engine_path(model: Path, precision: str) -> Path:
    """best.onnx -> best.engine, best.onnx --fp16 -> best.fp16.engine, best.int8.onnx -> best.int8.engine."""
    stem = model.stem
    tag = {"fp16": ".fp16", "int8": ".int8"}.get(precision, "")
    if tag and not stem.endswith(tag):
        stem += tag
    return model.with_name(stem + ".engine")


def make_fp16_onnx(model: Path, facts: OnnxFacts) -> Path:
    """MODEL.fp16.onnx from the FP32 ONNX (softmax kept FP32), as ``clo-export onnx --half`` writes it."""
    import onnx

    from clo_export.export.fp16 import to_fp16
    from clo_export.fileio import atomic_path

    if facts.meta.nms:
        raise CloExportError(
            f"'{model.name}' ends in NMS; make its FP16 ONNX with clo-export onnx best.pt --half --nms and pass that"
        )
    out = model.with_name(model.stem + ".fp16.onnx")
    proto = to_fp16(onnx.load(str(model)))
    meta = dataclasses.replace(facts.meta, precision="fp16")
    write_metadata(proto, meta)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return out


def read_keep_float(path: str | Path) -> tuple[str, ...]:
    """The "float_nodes" list of a `clo-export quantize` report (ONNX node names kept in float)."""
    import json

    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CloExportError(
            f"--keep-float {path} does not exist; pass the JSON report clo-export quantize wrote"
        ) from None
    except (OSError, ValueError) as e:
        raise CloExportError(
            f"--keep-float {path} is not readable JSON ({e}); pass the report clo-export quantize wrote"
        ) from None
    nodes = data.get("float_nodes") if isinstance(data, dict) else None
    if not isinstance(nodes, list) or not all(isinstance(n, str) for n in nodes):
        raise CloExportError(
            f'--keep-float {path} has no "float_nodes" list of node names; pass the JSON report '
            "clo-export quantize wrote"
        )
    return tuple(nodes)
