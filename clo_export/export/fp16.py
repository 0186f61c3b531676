"""Convert an FP32 ONNX model to FP16, keeping overflow-prone ops in FP32 behind explicit Casts.

For TensorRT 11's strongly typed mode (precision is read from the tensor types, no builder flags)
and ONNX Runtime CUDA. Float32 initializers, Constant/ConstantOfShape values, ``Cast(to=FLOAT)``
targets, value_info and graph I/O become float16. Each node whose op type is in ``keep_fp32_ops``
(default: the attention's Softmax, whose exp overflows FP16) gets ``Cast(to=FLOAT)`` on its float
inputs and ``Cast(to=FLOAT16)`` on its float outputs, so the graph states the mixed precision
explicitly; consecutive kept ops share the FP32 tensor instead of a cast round trip. Inputs that
ONNX defines as float32 only (Resize scales, NonMaxSuppression) stay float32.

Graph I/O is FP16 by default (``images`` and ``output0`` become float16: feed ``np.float16``);
``keep_io_fp32=True`` keeps FP32 I/O and adds boundary casts instead. The CloFormer attention has
no ReduceMean/Pow, and the YOLOv5 decode's Pow works on values <= 4, so nothing else overflows by
default; decoded boxes are pixel coordinates, which FP16 resolves to 0.5 px between 512 and 1024
(add ops to ``keep_fp32_ops`` or use ``keep_io_fp32`` when that matters).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clo_export.artifacts import graph_inputs
from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FP16_MAX = float(np.finfo(np.float16).max)

#: Inputs that the ONNX spec types as float32 only, by op type and input index.
FP32_ONLY_INPUTS: dict[str, tuple[int, ...]] = {
    "Resize": (1, 2),
    "Upsample": (1,),
    "NonMaxSuppression": (0, 1, 3, 4),
}


def _to_half(tensor: onnx.TensorProto) -> onnx.TensorProto:
    """A float16 copy of a float32 tensor, clipped to the FP16 range instead of becoming inf."""
    array = numpy_helper.to_array(tensor)
    clipped = np.clip(array, -FP16_MAX, FP16_MAX)
    if not np.array_equal(clipped, array, equal_nan=True):
        log.warning("tensor %r has values beyond the FP16 range; clipped to +/-%g", tensor.name, FP16_MAX)
    return numpy_helper.from_array(clipped.astype(np.float16), tensor.name)


def _elem_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every named tensor, from shape inference over a copy of the model."""
    inferred = onnx.shape_inference.infer_shapes(model)
    graph = inferred.graph
    types = {t.name: t.data_type for t in graph.initializer}
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    return types


def _fp32_positions(
    nodes: Iterable[onnx.NodeProto], keep: frozenset[str], types: dict[str, int]
) -> set[tuple[int, int]]:
    """(node index, input index) pairs whose float input must be float32."""
    positions = set()
    for n, node in enumerate(nodes):
        for i, name in enumerate(node.input):
            if not name or types.get(name) != FLOAT:
                continue
            if node.op_type in keep or i in FP32_ONLY_INPUTS.get(node.op_type, ()):
                positions.add((n, i))
    return positions


def _convert_constant_node(node: onnx.NodeProto) -> None:
    """Make a Constant/ConstantOfShape node holding float32 hold float16 instead."""
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == FLOAT:
            attr.t.CopyFrom(_to_half(attr.t))
        elif attr.name in ("value_float", "value_floats"):
            values = [attr.f] if attr.name == "value_float" else list(attr.floats)
            shape = [] if attr.name == "value_float" else [len(values)]
            tensor = numpy_helper.from_array(np.array(values, dtype=np.float32).reshape(shape))
            node.ClearField("attribute")
            node.attribute.append(helper.make_attribute("value", _to_half(tensor)))
            return


def _set_elem_type(infos: Iterable[onnx.ValueInfoProto], skip: set[str]) -> None:
    """Switch float32 value infos to float16, except the names in `skip`."""
    for info in infos:
        tensor_type = info.type.tensor_type
        if info.name not in skip and tensor_type.elem_type == FLOAT:
            tensor_type.elem_type = HALF


def to_fp16(
    model: onnx.ModelProto, keep_fp32_ops: Iterable[str] = ("Softmax",), keep_io_fp32: bool = False
) -> onnx.ModelProto:
    """Return an FP16 copy of `model` with `keep_fp32_ops` computed in FP32 via explicit Casts."""
    keep = frozenset(keep_fp32_ops)
    src = model.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in src.node for a in n.attribute):
        raise CloExportError(
            "FP16 conversion does not handle If/Loop/Scan subgraphs; simplify the model first (clo-export onnx)"
        )
    types = _elem_types(model)
    positions = _fp32_positions(src.node, keep, types)
    uses: dict[str, list[bool]] = {}  # tensor -> for each reader, whether it reads at a float32 position
    for n, node in enumerate(src.node):
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((n, i) in positions)
    stay_fp32 = _fp32_constants(src, uses)

    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    for i, tensor in enumerate(graph.initializer):
        if tensor.data_type == FLOAT and tensor.name not in stay_fp32:
            graph.initializer[i].CopyFrom(_to_half(tensor))
    nodes = _rewrite_nodes(src, keep, types, positions, uses, stay_fp32)

    produced = {name for node in nodes for name in node.output}
    kept_info = [info for info in graph.value_info if info.name in produced]  # drop FP16 copies never made
    del graph.value_info[:]
    graph.value_info.extend(kept_info)
    _set_elem_type(graph.value_info, stay_fp32)
    if keep_io_fp32:
        nodes = _add_boundary_casts(graph, nodes, types)
    else:
        _set_elem_type(graph.input, stay_fp32)
        _set_elem_type(graph.output, stay_fp32)
    del graph.node[:]
    graph.node.extend(nodes)
    return result


def _fp32_constants(graph: onnx.GraphProto, uses: dict[str, list[bool]]) -> set[str]:
    """Float constants read only at float32 positions: they stay float32 (no Cast needed)."""
    output_names = {o.name for o in graph.output}
    constant_names = {t.name for t in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }
    return {name for name in constant_names if uses.get(name) and all(uses[name]) and name not in output_names}


def _rewrite_nodes(
    src: onnx.GraphProto,
    keep: frozenset[str],
    types: dict[str, int],
    positions: set[tuple[int, int]],
    uses: dict[str, list[bool]],
    stay_fp32: set[str],
) -> list[onnx.NodeProto]:
    """The FP16 node list: constants and Casts retargeted, float32 inputs behind shared Casts, kept ops cast back."""
    output_names = {o.name for o in src.output}
    nodes: list[onnx.NodeProto] = []
    fp32_alias: dict[str, str] = {name: name for name in stay_fp32}  # tensor -> its float32 twin

    def fp32_input(name: str, consumer: str, index: int) -> str:
        if name not in fp32_alias:  # one Cast per tensor, shared by all its float32 readers
            fp32_alias[name] = f"{name}__fp32"
            nodes.append(
                helper.make_node("Cast", [name], [fp32_alias[name]], name=f"{consumer}/to_fp32_{index}", to=FLOAT)
            )
        return fp32_alias[name]

    for n, original in enumerate(src.node):
        node = onnx.NodeProto()
        node.CopyFrom(original)
        label = node.name or f"{node.op_type}_{n}"
        if node.op_type in ("Constant", "ConstantOfShape") and not set(node.output) & stay_fp32:
            _convert_constant_node(node)
        elif node.op_type == "Cast":
            to = next(a for a in node.attribute if a.name == "to")
            to.i = HALF if to.i == FLOAT else to.i
        for i, name in enumerate(node.input):
            if (n, i) in positions:
                node.input[i] = fp32_input(name, label, i)
        nodes.append(node)
        if node.op_type in keep:
            for j, name in enumerate(node.output):
                if types.get(name) == FLOAT:
                    node.output[j] = fp32_alias[name] = f"{name}__fp32"
                    if all(uses.get(name, [])) and name not in output_names:
                        continue  # every reader takes float32: no FP16 copy needed
                    nodes.append(
                        helper.make_node("Cast", [node.output[j]], [name], name=f"{label}/to_fp16_{j}", to=HALF)
                    )
    return nodes


def _add_boundary_casts(
    graph: onnx.GraphProto, nodes: list[onnx.NodeProto], types: dict[str, int]
) -> list[onnx.NodeProto]:
    """Keep float32 graph I/O: cast float inputs to FP16 on entry and float outputs to FP32 on exit."""
    renames: dict[str, str] = {}
    head: list[onnx.NodeProto] = []
    for inp in graph_inputs(graph):
        if types.get(inp.name) == FLOAT:
            renames[inp.name] = f"{inp.name}__fp16"
            head.append(helper.make_node("Cast", [inp.name], [renames[inp.name]], name=f"{inp.name}/to_fp16", to=HALF))
    outputs = {o.name for o in graph.output if types.get(o.name) == FLOAT}
    for name in outputs:
        renames.setdefault(name, f"{name}__fp16")
    tail = [
        helper.make_node("Cast", [renames[name]], [name], name=f"{name}/to_fp32", to=FLOAT) for name in sorted(outputs)
    ]
    for node in nodes:
        for i, name in enumerate(node.input):
            node.input[i] = renames.get(name, name)
        for j, name in enumerate(node.output):
            if name in outputs:
                node.output[j] = renames[name]
    return head + nodes + tail
