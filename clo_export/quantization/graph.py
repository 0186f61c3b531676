"""Where Q/DQ goes in an exported detector, found by graph topology (node names only as labels).

TensorRT runs a layer in INT8 when its inputs come through DequantizeLinear. We quantize the
inputs of Conv (activation + weight), of MatMul (both activations) and of residual Add (two
same-shape 4-D activations: YOLOv5's Bottleneck shortcut), and nothing else: Q/DQ around
Sigmoid/Mul/Resize/Concat would only block TensorRT's fusions.

EfficientAttention's attention-map path is found from its anchors by structure: every ``Tanh``
(high-frequency path: ``tanh(AttnMap(q*k) * scale)``, walked up through Convs, SiLUs and scalings by
constants to the product of two activations) and every ``Softmax`` (low-frequency path:
``softmax(q@k^T) @ v``). Graphs from YOLOv5's export.py and from clo-export onnx get the same nodes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

WEIGHTED = ("Conv", "MatMul")


@dataclass(frozen=True)
class Target:
    """One node input that gets Q/DQ: activation (per-tensor) or Conv weight (per-channel, axis 0)."""

    node: str
    op_type: str
    index: int
    tensor: str
    weight: bool = False
    attention: bool = False  # part of EfficientAttention's attention-map path


class GraphIndex:
    """Producers, consumers, constants and inferred shapes of a model's graph."""

    def __init__(self, model: onnx.ModelProto):
        self.model = model
        g = model.graph
        self.initializers = {t.name: t for t in g.initializer}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[tuple[onnx.NodeProto, int]]] = defaultdict(list)
        self.constant_nodes: dict[str, onnx.NodeProto] = {}
        for node in g.node:
            for out in node.output:
                self.producer[out] = node
            if node.op_type == "Constant":
                self.constant_nodes[node.output[0]] = node
            for i, name in enumerate(node.input):
                if name:
                    self.consumers[name].append((node, i))
        self.shapes = _shapes(model)

    def is_constant(self, name: str) -> bool:
        return name in self.initializers or name in self.constant_nodes

    def constant(self, name: str) -> np.ndarray:
        """Value of an initializer or Constant node output."""
        if name in self.initializers:
            return numpy_helper.to_array(self.initializers[name])
        attr = next(a for a in self.constant_nodes[name].attribute if a.name == "value")
        return numpy_helper.to_array(attr.t)

    def rank4_same(self, a: str, b: str) -> bool:
        sa, sb = self.shapes.get(a), self.shapes.get(b)
        return sa is not None and sa == sb and len(sa) == 4


def _shapes(model: onnx.ModelProto) -> dict[str, tuple]:
    """Static shapes by tensor name from ONNX shape inference (symbolic dims kept as names)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - shapes only refine the residual-Add test
        inferred = model
    out = {}
    g = inferred.graph
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            out[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else d.dim_param for d in t.shape.dim)
    return out


def ensure_node_names(model: onnx.ModelProto) -> None:
    """Give unnamed nodes unique names (in place) so targets and exclusions can refer to them."""
    seen = {n.name for n in model.graph.node if n.name}
    for k, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{k}"
            while name in seen:
                name += "_"
            node.name = name
            seen.add(name)


def _is_silu(idx: GraphIndex, node: onnx.NodeProto) -> str | None:
    """For Mul(x, Sigmoid(x)) return x, else None."""
    if node.op_type != "Mul" or len(node.input) != 2:
        return None
    for a, b in ((0, 1), (1, 0)):
        p = idx.producer.get(node.input[b])
        if p is not None and p.op_type == "Sigmoid" and p.input[0] == node.input[a]:
            return node.input[a]
    return None


def _scaled_input(idx: GraphIndex, node: onnx.NodeProto) -> str | None:
    """For an elementwise op with one constant operand (x*c, x/c, x+c) or a Cast/Identity, the other input."""
    if node.op_type in ("Cast", "Identity"):
        return node.input[0]
    if node.op_type in ("Mul", "Div", "Add", "Sub") and len(node.input) == 2:
        live = [i for i in node.input if not idx.is_constant(i)]
        if len(live) == 1:
            return live[0]
    return None


def _attention_map_path(idx: GraphIndex, tanh: onnx.NodeProto) -> set[str]:
    """The AttnMap path that feeds a Tanh: walked up through Convs, SiLUs and scalings to the q*k product.

    Exporters differ in which scalings they keep: YOLOv5's export keeps ``.mul(self.scalor)`` as a
    Mul by a constant, an onnxsim'd graph folds it into the Conv before; both are the same path.
    """
    found = {tanh.name}
    tensor = tanh.input[0]
    while (p := idx.producer.get(tensor)) is not None and p.name not in found:
        if p.op_type == "Conv":
            found.add(p.name)
            tensor = p.input[0]
        elif (x := _is_silu(idx, p)) is not None:
            found.add(p.name)
            found.add(idx.producer[p.input[1] if p.input[0] == x else p.input[0]].name)
            tensor = x
        elif (x := _scaled_input(idx, p)) is not None:
            found.add(p.name)
            tensor = x
        elif p.op_type == "Mul":  # two activations: q * k, where the path starts
            found.add(p.name)
            break
        else:
            break
    return found


def _softmax_path(idx: GraphIndex, softmax: onnx.NodeProto) -> set[str]:
    """q @ k^T (through any scalings) -> Softmax -> @ v."""
    found = {softmax.name}
    tensor = softmax.input[0]
    while (p := idx.producer.get(tensor)) is not None and p.name not in found:
        if p.op_type == "MatMul":
            found.add(p.name)
            break
        x = _scaled_input(idx, p)
        if x is None:
            break
        tensor = x
    found.update(c.name for c, _ in idx.consumers.get(softmax.output[0], []) if c.op_type == "MatMul")
    return found


def attention_nodes(model: onnx.ModelProto, idx: GraphIndex | None = None) -> set[str]:
    """Names of the attention-map nodes: q*k Mul -> AttnMap Convs/SiLU -> Tanh, and MatMul -> Softmax -> MatMul."""
    idx = idx or GraphIndex(model)
    found: set[str] = set()
    for node in model.graph.node:
        if node.op_type == "Tanh":
            found |= _attention_map_path(idx, node)
        elif node.op_type == "Softmax":
            found |= _softmax_path(idx, node)
    return found


def find_targets(model: onnx.ModelProto, keep_attention_fp: bool = True) -> list[Target]:
    """Every Q/DQ insertion point; attention-map targets are marked, and dropped when ``keep_attention_fp``."""
    ensure_node_names(model)
    idx = GraphIndex(model)
    attn = attention_nodes(model, idx)
    targets: list[Target] = []
    for node in model.graph.node:
        a = node.name in attn
        if node.op_type == "Conv":
            if not idx.is_constant(node.input[0]):
                targets.append(Target(node.name, "Conv", 0, node.input[0], attention=a))
            if idx.is_constant(node.input[1]):
                targets.append(Target(node.name, "Conv", 1, node.input[1], weight=True, attention=a))
        elif node.op_type == "MatMul":
            if not any(idx.is_constant(i) for i in node.input):
                targets += [Target(node.name, "MatMul", i, t, attention=a) for i, t in enumerate(node.input)]
        elif node.op_type == "Add" and len(node.input) == 2:
            x, y = node.input
            if not idx.is_constant(x) and not idx.is_constant(y) and idx.rank4_same(x, y):
                targets += [Target(node.name, "Add", i, t, attention=a) for i, t in enumerate(node.input)]
    return [t for t in targets if not (keep_attention_fp and t.attention)]


def activation_tensors(targets: list[Target]) -> list[str]:
    """Distinct activation tensors to calibrate, in graph order."""
    return list(dict.fromkeys(t.tensor for t in targets if not t.weight))
