"""Pre-flight check of an ONNX against one TensorRT version's parser rules, without TensorRT.

`check_onnx(model, plan)` returns one `Problem` per violation of the rules TensorRT documents for
the plan's version (onnx-tensorrt docs/operators.md, the TensorRT quantization and DLA guides):

- opset limit (`plan.opset_limit`);
- operators the parser has no importer for;
- QuantizeLinear/DequantizeLinear: zero point 0; per-channel scales only on weights, along the
  output-channel axis;
- NonMaxSuppression: `max_output_boxes_per_class`, `iou_threshold`, `score_threshold` initializers;
- with DLA and no GPU fallback: layers DLA cannot run;
- a strongly typed FP16 build (always on 11.x) must start from an FP16 ONNX.

`clo-export trt --dry-run` prints these; `engine.build.build_engine` runs the same check on the
ONNX it is about to hand to TensorRT and refuses to build when there is a problem.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from clo_export.artifacts import opset_of
from clo_export.engine.plan import BuildPlan, opset_limit
from clo_export.engine.version import TrtVersion

# Operators no supported TensorRT parses ("N" in onnx-tensorrt's operators.md for 10.15).
NEVER = frozenset(
    {
        "AffineGrid",
        "Bernoulli",
        "BitShift",
        "BitwiseAnd",
        "BitwiseNot",
        "BitwiseOr",
        "BitwiseXor",
        "CenterCropPad",
        "Col2Im",
        "Compress",
        "ConcatFromSequence",
        "ConvInteger",
        "DFT",
        "Det",
        "DynamicQuantizeLinear",
        "ImageDecoder",
        "MatMulInteger",
        "MaxRoiPool",
        "MaxUnpool",
        "MelWeightMatrix",
        "Multinomial",
        "NegativeLogLikelihoodLoss",
        "Optional",
        "OptionalGetElement",
        "OptionalHasElement",
        "QLinearConv",
        "QLinearMatMul",
        "RegexFullMatch",
        "SequenceAt",
        "SequenceConstruct",
        "SequenceEmpty",
        "SequenceErase",
        "SequenceInsert",
        "SequenceLength",
        "SequenceMap",
        "SoftmaxCrossEntropyLoss",
        "SplitToSequence",
        "StringConcat",
        "StringNormalizer",
        "StringSplit",
        "TfIdfVectorizer",
        "Unique",
    }
)
# Also unsupported by the 8.x parsers (operators.md of the 8.x branches), supported from 10.
NOT_IN_8 = frozenset(
    {"Hardmax", "MeanVarianceNormalization", "Mod", "RandomNormal", "RandomNormalLike", "Reciprocal", "Shrink"}
)
# ONNX ops whose TensorRT layers DLA can run (TensorRT DLA guide: convolution, pooling, activation,
# element-wise, scale/batch norm, LRN, concat, resize, slice, shuffle/reshape, softmax, reduce, unary).
DLA_OPS = frozenset(
    {
        "Conv",
        "ConvTranspose",
        "BatchNormalization",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "Relu",
        "LeakyRelu",
        "Sigmoid",
        "Tanh",
        "Clip",
        "HardSigmoid",
        "HardSwish",
        "PRelu",
        "Selu",
        "Elu",
        "Add",
        "Sub",
        "Mul",
        "Div",
        "Max",
        "Min",
        "Pow",
        "Equal",
        "Greater",
        "Less",
        "Sum",
        "LRN",
        "Concat",
        "Resize",
        "Upsample",
        "Slice",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "Softmax",
        "ReduceMax",
        "ReduceMean",
        "Abs",
        "Sin",
        "Cos",
        "Neg",
        "Sqrt",
        "Exp",
        "Log",
        "Identity",
        "QuantizeLinear",
        "DequantizeLinear",
        "Constant",
    }
)
NMS_STATIC_INPUTS = {2: "max_output_boxes_per_class", 3: "iou_threshold", 4: "score_threshold"}
WEIGHT_AXIS = {"Conv": 0, "ConvTranspose": 1, "Gemm": 0, "MatMul": 1}  # output-channel axis of the weight


@dataclass(frozen=True)
class Problem:
    """One rule violation: which rule, where (node name or the model), and how to fix it."""

    rule: str  # opset | unsupported-op | qdq | nms | dla | fp16-onnx
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.where}: {self.message}"


def check_onnx(model: Any, plan: BuildPlan) -> list[Problem]:
    """Every problem `model` (an onnx.ModelProto) has for the TensorRT version and build of `plan`."""
    graph = model.graph
    consts = _constants(graph)
    problems = _opset(model, plan.version)
    problems += _operators(graph.node, plan.version)
    problems += _qdq(graph.node, consts)
    problems += _nms(graph.node, {t.name for t in graph.initializer})
    if plan.dla_core is not None and "GPU_FALLBACK" not in plan.builder_flags:
        problems += [
            Problem(
                "dla", _name(n), f"{n.op_type} cannot run on DLA; allow --gpu-fallback or export a model without it"
            )
            for n in dla_gpu_nodes(graph.node)
        ]
    if plan.strongly_typed and plan.precision == "fp16" and not plan.needs_fp16_onnx and not _has_fp16_weights(graph):
        problems.append(
            Problem(
                "fp16-onnx",
                "model",
                f"TensorRT {plan.version} builds strongly typed, so FP16 must "
                "come from an FP16 ONNX, but this one has no FP16 weights; pass the FP32 ONNX (it is "
                "converted on the way) or make one with clo-export onnx --half",
            )
        )
    return problems


def dla_gpu_nodes(nodes: Iterable[Any]) -> list[Any]:
    """Nodes whose layers DLA cannot run (they need GPU fallback)."""
    return [n for n in nodes if n.op_type not in DLA_OPS]


def _name(node: Any) -> str:
    return node.name or f"{node.op_type}({', '.join(node.output)})"


def _opset(model: Any, version: TrtVersion) -> list[Problem]:
    limit = opset_limit(version)
    opset = opset_of(model) or 0
    if opset > limit:
        return [
            Problem(
                "opset",
                "model",
                f"opset {opset} is above {limit}, the newest TensorRT {version} parses; "
                f"re-export with clo-export onnx --opset {min(limit, 17)}",
            )
        ]
    return []


def _operators(nodes: Iterable[Any], version: TrtVersion) -> list[Problem]:
    unsupported = NEVER | (NOT_IN_8 if version.major < 10 else frozenset())
    out = []
    for n in nodes:
        if n.domain not in ("", "ai.onnx"):
            out.append(
                Problem(
                    "unsupported-op",
                    _name(n),
                    f"{n.domain}::{n.op_type} is not an ONNX operator; "
                    "TensorRT needs a plugin for it, re-export without it",
                )
            )
        elif n.op_type in unsupported:
            out.append(
                Problem(
                    "unsupported-op",
                    _name(n),
                    f"TensorRT {version}'s ONNX parser has no {n.op_type}; re-export the model without it",
                )
            )
    return out


def _qdq(nodes: list[Any], consts: dict[str, np.ndarray]) -> list[Problem]:
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i, name in enumerate(n.input):
            consumers.setdefault(name, []).append((n, i))
    # weights: constants, and the outputs of QuantizeLinear nodes that quantize a constant
    rank = {name: value.ndim for name, value in consts.items()}
    rank.update({n.output[0]: rank[n.input[0]] for n in nodes if n.op_type == "QuantizeLinear" and n.input[0] in rank})
    out = []
    for n in (n for n in nodes if n.op_type in ("QuantizeLinear", "DequantizeLinear")):
        if len(n.input) > 2 and n.input[2]:
            zp = consts.get(n.input[2])
            if zp is None or np.any(zp != 0):
                out.append(
                    Problem(
                        "qdq", _name(n), "zero point must be 0 (symmetric INT8); re-quantize with clo-export quantize"
                    )
                )
        scale = consts.get(n.input[1]) if len(n.input) > 1 else None
        if scale is None or scale.size <= 1:
            continue
        if n.input[0] not in rank:
            out.append(
                Problem(
                    "qdq",
                    _name(n),
                    "per-channel scale on an activation; TensorRT takes per-tensor "
                    "activations and per-channel weights only",
                )
            )
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1) % max(rank[n.input[0]], 1)
        for user, index in consumers.get(n.output[0], []) if n.op_type == "DequantizeLinear" else []:
            want = WEIGHT_AXIS.get(user.op_type)
            if want is not None and index == 1 and axis != want:
                out.append(
                    Problem(
                        "qdq",
                        _name(n),
                        f"per-channel axis {axis} on the weight of {user.op_type} "
                        f"{_name(user)}; TensorRT needs the output-channel axis {want}",
                    )
                )
    return out


def _nms(nodes: Iterable[Any], initializers: set[str]) -> list[Problem]:
    out = []
    for n in (n for n in nodes if n.op_type == "NonMaxSuppression"):
        for index, what in NMS_STATIC_INPUTS.items():
            if len(n.input) > index and n.input[index] and n.input[index] not in initializers:
                out.append(
                    Problem(
                        "nms",
                        _name(n),
                        f"{what} ({n.input[index]}) must be an initializer for "
                        "TensorRT's NonMaxSuppression; re-export with clo-export onnx --nms",
                    )
                )
    return out


def _has_fp16_weights(graph: Any) -> bool:
    from onnx import TensorProto

    return any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Initializers and Constant-node values by name (small tensors only matter here)."""
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant":
            value = next((a.t for a in n.attribute if a.name == "value"), None)
            if value is not None:
                out[n.output[0]] = numpy_helper.to_array(value)
    return out
