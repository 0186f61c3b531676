"""Multiply-accumulates per Conv/MatMul node, and the share of Conv MACs a Q/DQ model runs in INT8.

TensorRT runs a Conv in INT8 when both its input and its weight come through DequantizeLinear;
the share of Conv MACs that do is what "how much of the model is INT8" means for speed.
"""

from __future__ import annotations

import math

import onnx

from clo_export.quantization.graph import GraphIndex


def _dims(shape: tuple | None) -> list[int] | None:
    if shape is None or not all(isinstance(d, int) and d > 0 for d in shape):
        return None
    return list(shape)


def node_macs(model: onnx.ModelProto, idx: GraphIndex | None = None) -> dict[str, int]:
    """MACs of every Conv (C_out * C_in/g * kH * kW * H_out * W_out per image) and MatMul with static shapes."""
    idx = idx or GraphIndex(model)
    out: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type == "Conv":
            w = _weight_shape(idx, node.input[1])
            y = _dims(idx.shapes.get(node.output[0]))
            if w is not None and y is not None and len(y) >= 3:
                out[node.name] = int(math.prod(w) * math.prod(y[2:]) * y[0])
        elif node.op_type == "MatMul":
            a, y = _dims(idx.shapes.get(node.input[0])), _dims(idx.shapes.get(node.output[0]))
            if a is not None and y is not None:
                out[node.name] = int(math.prod(y) * a[-1])
    return out


def _weight_shape(idx: GraphIndex, name: str) -> list[int] | None:
    """Shape of a Conv weight: the constant itself, or the INT8 tensor behind its DequantizeLinear."""
    if idx.is_constant(name):
        return list(idx.constant(name).shape)
    p = idx.producer.get(name)
    if p is not None and p.op_type == "DequantizeLinear" and idx.is_constant(p.input[0]):
        return list(idx.constant(p.input[0]).shape)
    return _dims(idx.shapes.get(name))


def int8_nodes(model: onnx.ModelProto, idx: GraphIndex | None = None) -> set[str]:
    """Conv/MatMul nodes whose two first inputs both come from DequantizeLinear (TensorRT runs them in INT8)."""
    idx = idx or GraphIndex(model)

    def dq(name: str) -> bool:
        p = idx.producer.get(name)
        return p is not None and p.op_type == "DequantizeLinear"

    return {
        n.name
        for n in model.graph.node
        if n.op_type in ("Conv", "MatMul") and len(n.input) >= 2 and dq(n.input[0]) and dq(n.input[1])
    }


def int8_conv_share(model: onnx.ModelProto) -> float:
    """Share of Conv MACs in INT8 in a Q/DQ model (0 when it has no Conv with a known shape)."""
    idx = GraphIndex(model)
    macs = {
        k: v for k, v in node_macs(model, idx).items() if k in {n.name for n in model.graph.node if n.op_type == "Conv"}
    }
    total = sum(macs.values())
    q = int8_nodes(model, idx)
    return sum(v for k, v in macs.items() if k in q) / total if total else 0.0
