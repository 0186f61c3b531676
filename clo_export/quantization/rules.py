"""Check a Q/DQ ONNX against TensorRT's explicit-INT8 rules (REFERENCE.md), on any model, ours or not.

Rules: opset >= 13; every Q/DQ has an explicit INT8 zero point that is all 0 (symmetric; UINT8
and non-zero points are what ONNX Runtime's defaults produce and TensorRT rejects); weights are
per-channel on axis 0 and activations per-tensor; no bias goes through DequantizeLinear (an
INT32 bias is ONNX Runtime's default and TensorRT fails on "bias_DequantizeLinear"); Q feeds DQ
only, and DQ feeds only Conv/MatMul/Add inputs, where TensorRT uses it.
"""

from __future__ import annotations

import numpy as np
import onnx

from clo_export.artifacts import opset_of
from clo_export.errors import CloExportError
from clo_export.quantization.graph import GraphIndex

MIN_OPSET = 13
QDQ_CONSUMERS = ("Conv", "MatMul", "Add", "ConvTranspose", "Gemm")


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def check_qdq(model: onnx.ModelProto) -> list[str]:
    """Every rule violation as a readable line (empty list: TensorRT-correct explicit INT8)."""
    problems: list[str] = []
    opset = opset_of(model) or 0
    if opset < MIN_OPSET:
        problems.append(f"opset {opset} < {MIN_OPSET}: per-channel Q/DQ needs opset 13")
    idx = GraphIndex(model)
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    if not qdq:
        problems.append("no QuantizeLinear/DequantizeLinear nodes: this is not an explicit INT8 model")
    for node in qdq:
        where = f"{node.op_type} '{node.name}'"
        problems += _zero_point(idx, node, where)
        if not idx.is_constant(node.input[1]):
            problems.append(f"{where}: scale is computed at run time; it must be a constant")
            continue
        scale = idx.constant(node.input[1])
        if scale.size and not np.all(scale > 0):
            problems.append(f"{where}: scale must be positive")
        source = _weight_source(idx, node)
        if source is not None:
            problems += _weight(idx, node, source, scale, where)
        elif scale.size != 1:
            problems.append(f"{where}: activation scale has {scale.size} values; activations must be per-tensor")
        consumers = idx.consumers.get(node.output[0], [])
        if node.op_type == "QuantizeLinear":
            bad = [c.op_type for c, _ in consumers if c.op_type != "DequantizeLinear"]
            if bad:
                problems.append(f"{where}: feeds {', '.join(bad)}; a QuantizeLinear must feed DequantizeLinear only")
            continue
        for c, i in consumers:
            if c.op_type not in QDQ_CONSUMERS:
                problems.append(
                    f"{where}: feeds {c.op_type} '{c.name}'; Q/DQ belongs only in front of Conv/MatMul/Add "
                    "(elsewhere it blocks TensorRT fusions)"
                )
            elif c.op_type in ("Conv", "ConvTranspose", "Gemm") and i == 2:
                problems.append(
                    f"{where}: quantized bias of {c.op_type} '{c.name}'; keep bias float "
                    "(TensorRT: Invalid Node bias_DequantizeLinear)"
                )
    return problems


def _zero_point(idx: GraphIndex, node: onnx.NodeProto, where: str) -> list[str]:
    """The zero point must be given, INT8 and all zero."""
    if len(node.input) < 3 or not node.input[2]:
        return [f"{where}: no zero point (defaults to UINT8); TensorRT needs an INT8 zero point of 0"]
    if not idx.is_constant(node.input[2]):
        return [f"{where}: zero point is computed at run time; it must be a constant 0"]
    zp = idx.constant(node.input[2])
    out = []
    if zp.dtype != np.int8:
        out.append(f"{where}: zero point is {zp.dtype}; TensorRT needs INT8 (symmetric)")
    if np.any(zp != 0):
        out.append(f"{where}: zero point {zp.ravel()[:4].tolist()} is not 0 (asymmetric); TensorRT needs 0")
    return out


def _weight_source(idx: GraphIndex, node: onnx.NodeProto) -> str | None:
    """The constant a Q/DQ node quantizes: its own constant input, or (DQ after Q) the Q's constant input."""
    if idx.is_constant(node.input[0]):
        return node.input[0]
    p = idx.producer.get(node.input[0])
    if (
        node.op_type == "DequantizeLinear"
        and p is not None
        and p.op_type == "QuantizeLinear"
        and idx.is_constant(p.input[0])
    ):
        return p.input[0]
    return None


def _weight(idx: GraphIndex, node: onnx.NodeProto, source: str, scale: np.ndarray, where: str) -> list[str]:
    """Constant input: a Conv weight (per-channel, axis 0) or, in INT32, a quantized bias."""
    value = idx.constant(source)
    if value.dtype == np.int32:
        return [f"{where}: INT32 input '{source}' is a quantized bias; keep bias float"]
    out = []
    if value.ndim >= 2:
        axis = _attr(node, "axis", 1)
        if scale.size != value.shape[0] or axis not in (0, -value.ndim):
            out.append(
                f"{where}: weight '{source}' is quantized with {scale.size} scale(s) on axis {axis}; "
                f"TensorRT wants per-channel scales on axis 0 ({value.shape[0]} values)"
            )
    return out


def require_trt_qdq(model: onnx.ModelProto, what: str = "the quantized model") -> None:
    """Raise CloExportError listing the violations (first five) if ``model`` breaks TensorRT's Q/DQ rules."""
    problems = check_qdq(model)
    if problems:
        more = f" (+{len(problems) - 5} more)" if len(problems) > 5 else ""
        raise CloExportError(f"{what} breaks TensorRT's Q/DQ rules: " + "; ".join(problems[:5]) + more)
