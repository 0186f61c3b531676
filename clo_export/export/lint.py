"""Static-shape lint: find run-time shape arithmetic that TensorRT and fixed-size engines reject.

A graph passes when every tensor shape is known before inference: no Shape/Size nodes (and nothing
computed from them), every Reshape takes its target shape from a constant, and every graph input
has fixed positive dims except dim 0, which may be a symbolic batch.

Data-dependent shapes are *not* shape arithmetic: the in-graph NMS tail (`nms_graph.append_nms`)
is built from ops with constant parameters only (its row count comes from NonMaxSuppression,
which TensorRT and ONNX Runtime size themselves), so it passes this lint without an exemption.
"""

from __future__ import annotations

import onnx

from clo_export.artifacts import graph_inputs
from clo_export.errors import CloExportError

#: Ops whose output is a tensor's shape or element count, the roots of shape arithmetic.
SHAPE_SOURCES = frozenset({"Shape", "Size"})

#: How many problems `check_static` quotes in its one-line message.
MAX_QUOTED = 3

FIX_HINT = "re-export with clo-export onnx, which computes reshape sizes as constants"


def _node_label(node: onnx.NodeProto, index: int) -> str:
    """A name for messages: the node's name, or its op type and position when unnamed."""
    return f"'{node.name}'" if node.name else f"#{index} (unnamed)"


def _constant_names(graph: onnx.GraphProto) -> set[str]:
    """Names of tensors whose value is fixed in the file: initializers and Constant outputs."""
    names = {init.name for init in graph.initializer}
    names.update(out for node in graph.node if node.op_type == "Constant" for out in node.output)
    return names


def _lint_shape_arithmetic(graph: onnx.GraphProto) -> list[str]:
    """Shape/Size nodes and every node that consumes a value derived from one."""
    problems: list[str] = []
    derived: set[str] = set()
    for i, node in enumerate(graph.node):  # ONNX graphs are stored topologically sorted
        label = _node_label(node, i)
        if node.op_type in SHAPE_SOURCES:
            problems.append(f"{node.op_type} node {label} reads a tensor shape at run time")
            derived.update(node.output)
            continue
        tainted = [name for name in node.input if name in derived]
        if tainted:
            problems.append(
                f"{node.op_type} node {label} computes with a run-time shape (input '{tainted[0]}' comes from "
                f"Shape/Size)"
            )
            derived.update(node.output)
    return problems


def _lint_reshapes(graph: onnx.GraphProto) -> list[str]:
    """Reshape nodes whose target shape is not a constant in the file."""
    constants = _constant_names(graph)
    problems = []
    for i, node in enumerate(graph.node):
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] not in constants:
            problems.append(
                f"Reshape node {_node_label(node, i)} takes its shape from computed tensor '{node.input[1]}', not a "
                f"constant"
            )
    return problems


def _lint_inputs(graph: onnx.GraphProto) -> list[str]:
    """Graph inputs with a missing shape or a non-fixed dim after dim 0."""
    problems = []
    for inp in graph_inputs(graph):
        tensor_type = inp.type.tensor_type
        if not tensor_type.HasField("shape"):
            problems.append(f"input '{inp.name}' has no shape")
            continue
        for axis, dim in enumerate(tensor_type.shape.dim):
            if axis == 0:
                continue
            if not (dim.HasField("dim_value") and dim.dim_value > 0):
                shown = dim.dim_param or (dim.dim_value if dim.HasField("dim_value") else "?")
                problems.append(f"input '{inp.name}' dim {axis} is '{shown}', not a fixed positive size")
    return problems


def lint(model: onnx.ModelProto) -> list[str]:
    """Return every static-shape problem in the main graph (empty when the graph is static)."""
    graph = model.graph
    return _lint_inputs(graph) + _lint_shape_arithmetic(graph) + _lint_reshapes(graph)


def check_static(model: onnx.ModelProto) -> None:
    """Raise CloExportError naming the first problems when `lint` finds any."""
    problems = lint(model)
    if not problems:
        return
    quoted = "; ".join(problems[:MAX_QUOTED])
    more = f" (and {len(problems) - MAX_QUOTED} more)" if len(problems) > MAX_QUOTED else ""
    raise CloExportError(f"ONNX graph is not static-shape: {quoted}{more}; {FIX_HINT}")


def full_check(model: onnx.ModelProto) -> None:
    """Run onnx.checker with full shape/type inference; raise CloExportError on failure."""
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        first = " ".join(str(e).split())[:300] or type(e).__name__
        raise CloExportError(
            f"ONNX model fails onnx.checker: {first}; re-export it with clo-export onnx "
            "(or report the exporter/opset combination)"
        ) from e
