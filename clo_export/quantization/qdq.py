"""Insert QuantizeLinear/DequantizeLinear the way TensorRT's explicit INT8 wants them.

- activations: one ``Q -> DQ`` pair per tensor, per-tensor scale ``amax/127``, INT8 zero point 0,
  rewired only into the target inputs (other consumers keep the float tensor);
- Conv weights: stored as INT8 (symmetric, per output channel, range -127..127) behind one
  ``DequantizeLinear(axis=0)``; the float bias stays float;
- nothing else changes: node order, names, opset and metadata are kept.
"""

from __future__ import annotations

import copy

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clo_export.errors import CloExportError
from clo_export.quantization.graph import GraphIndex, Target

QMAX = 127
TINY = np.float32(1e-12)  # TensorRT refuses scale 0; an all-zero tensor gets a tiny positive scale


def activation_scale(amax: float) -> np.float32:
    """Symmetric per-tensor scale for an activation range."""
    return np.float32(max(float(amax), 0.0) / QMAX) if amax > 0 else np.float32(TINY)


def quantize_weight(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel (axis 0) symmetric INT8 weights and their float32 scales."""
    w = np.asarray(w, dtype=np.float32)
    amax = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / QMAX, TINY).astype(np.float32)
    q = np.clip(np.round(w / scale.reshape(-1, *([1] * (w.ndim - 1)))), -QMAX, QMAX).astype(np.int8)
    return q, scale


def _unique(name: str, taken: set[str]) -> str:
    while name in taken:
        name += "_"
    taken.add(name)
    return name


def insert_qdq(model: onnx.ModelProto, targets: list[Target], ranges: dict[str, float]) -> onnx.ModelProto:
    """A copy of ``model`` with Q/DQ on every target; ``ranges`` maps activation tensors to amax."""
    missing = sorted({t.tensor for t in targets if not t.weight and t.tensor not in ranges})
    if missing:
        raise CloExportError(
            f"no calibration range for {len(missing)} tensor(s), e.g. '{missing[0]}'; "
            "recalibrate (--recalibrate) instead of using this cache"
        )
    out = copy.deepcopy(model)
    g = out.graph
    idx = GraphIndex(out)
    taken = {n.name for n in g.node} | {t.name for t in g.initializer} | set(idx.producer) | {i.name for i in g.input}
    new_inits: list[TensorProto] = []
    act_pairs = _activation_pairs(targets, ranges, taken, new_inits)
    weight_nodes = _weight_dequantizers(targets, idx, taken, new_inits)
    rewire = {
        (t.node, t.index): (weight_nodes[t.tensor] if t.weight else act_pairs[t.tensor][1]).output[0] for t in targets
    }

    nodes: list[onnx.NodeProto] = list(weight_nodes.values())
    for inp in g.input:
        nodes += act_pairs.get(inp.name, [])
    by_node: dict[str, list[tuple[int, str]]] = {}
    for (name, i), new in rewire.items():
        by_node.setdefault(name, []).append((i, new))
    for node in g.node:
        for i, new in by_node.get(node.name, []):
            node.input[i] = new
        nodes.append(node)
        for o in node.output:
            nodes += act_pairs.get(o, [])
    del g.node[:]
    g.node.extend(nodes)
    g.initializer.extend(new_inits)
    _drop_unused_constants(out)
    return out


def _activation_pairs(
    targets: list[Target], ranges: dict[str, float], taken: set[str], new_inits: list[TensorProto]
) -> dict[str, list[onnx.NodeProto]]:
    """One ``[Q, DQ]`` pair per quantized activation tensor (per-tensor scale, zero point 0)."""
    act_pairs: dict[str, list[onnx.NodeProto]] = {}
    for tensor in dict.fromkeys(t.tensor for t in targets if not t.weight):
        scale = _unique(f"{tensor}_scale", taken)
        zp = _unique(f"{tensor}_zero_point", taken)
        qt, dqt = _unique(f"{tensor}_QuantizeLinear_Output", taken), _unique(f"{tensor}_DequantizeLinear_Output", taken)
        new_inits += [
            numpy_helper.from_array(np.array(activation_scale(ranges[tensor]), dtype=np.float32), scale),
            numpy_helper.from_array(np.array(0, dtype=np.int8), zp),
        ]
        act_pairs[tensor] = [
            helper.make_node(
                "QuantizeLinear", [tensor, scale, zp], [qt], name=_unique(f"{tensor}_QuantizeLinear", taken)
            ),
            helper.make_node(
                "DequantizeLinear", [qt, scale, zp], [dqt], name=_unique(f"{tensor}_DequantizeLinear", taken)
            ),
        ]
    return act_pairs


def _weight_dequantizers(
    targets: list[Target], idx: GraphIndex, taken: set[str], new_inits: list[TensorProto]
) -> dict[str, onnx.NodeProto]:
    """One ``DequantizeLinear(axis=0)`` over INT8 per-channel weights per quantized weight tensor."""
    weight_nodes: dict[str, onnx.NodeProto] = {}
    for t in targets:
        if not t.weight or t.tensor in weight_nodes:
            continue
        w = idx.constant(t.tensor)
        if w.ndim < 2:
            raise CloExportError(f"Conv '{t.node}' has a weight of shape {w.shape}; expected (C_out, C_in/g, kH, kW)")
        q, s = quantize_weight(w)
        qname = _unique(f"{t.tensor}_quantized", taken)
        sname, zname = _unique(f"{t.tensor}_scale", taken), _unique(f"{t.tensor}_zero_point", taken)
        dq_out = _unique(f"{t.tensor}_DequantizeLinear_Output", taken)
        new_inits += [
            numpy_helper.from_array(q, qname),
            numpy_helper.from_array(s, sname),
            numpy_helper.from_array(np.zeros(len(s), dtype=np.int8), zname),
        ]
        weight_nodes[t.tensor] = helper.make_node(
            "DequantizeLinear",
            [qname, sname, zname],
            [dq_out],
            name=_unique(f"{t.tensor}_DequantizeLinear", taken),
            axis=0,
        )
    return weight_nodes


def _drop_unused_constants(model: onnx.ModelProto) -> None:
    """Remove float weights (initializers / Constant nodes) that no node reads any more."""
    g = model.graph
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    keep = [t for t in g.initializer if t.name in used]
    removed = {t.name for t in g.initializer} - {t.name for t in keep}
    del g.initializer[:]
    g.initializer.extend(keep)
    nodes = [n for n in g.node if not (n.op_type == "Constant" and n.output[0] not in used)]
    if len(nodes) != len(g.node):
        del g.node[:]
        g.node.extend(nodes)
    inputs = [i for i in g.input if i.name not in removed]
    del g.input[:]
    g.input.extend(inputs)
