"""Append YOLOv5-equivalent NMS to a decoded ``output0`` with the standard ONNX NonMaxSuppression op.

Semantics match YOLOv5's detect NMS with ``multi_label=False``: score = obj * cls, best class per
box, keep score > conf, per-class greedy NMS at IoU > iou, then the top ``max_det`` by score over
all classes. NonMaxSuppression (native in TensorRT >= 8.5 as INMSLayer, and in ONNX Runtime) runs
over a scores tensor [B, C, N] holding each box's best-class score in its class row and 0 elsewhere.

The tail never reads a tensor shape: kept scores are scattered into a [B, N] buffer made from the
data itself (score * 0), and TopK picks the top ``max_det`` per image, so it works for batch 1 and a
symbolic batch alike and passes `lint.lint` unchanged (the only run-time size, NonMaxSuppression's
row count, is data-dependent, which TensorRT sizes itself). All nodes are named ``nms/...``.

Outputs (fixed size, zero padded after ``num_dets``): ``num_dets`` int32 (B, 1), ``boxes`` float32
(B, max_det, 4) xyxy in input pixels, ``scores`` float32 (B, max_det), ``classes`` int32 (B, max_det).
An FP16 ``output0`` is cast to float32 first (NonMaxSuppression takes float32 only), so append NMS
*after* `fp16.to_fp16` to keep the tail and its outputs in float32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from clo_export.artifacts import opset_of
from clo_export.errors import CloExportError
from clo_export.postprocess import NMS_OUTPUTS
from clo_export.thresholds import DEFAULT, Thresholds

PREFIX = "nms/"
MIN_OPSET = 13  # Squeeze/Unsqueeze/ReduceSum take axes as inputs from 13 on


class _Builder:
    """Collects nodes and constant initializers under the ``nms/`` prefix."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._consts: dict[str, np.ndarray] = {}

    def const(self, name: str, value: np.ndarray) -> str:
        """The constant's tensor name; a name already made is reused (it must hold the same value)."""
        full = PREFIX + name
        if full not in self._consts:
            self._consts[full] = value
            self.inits.append(numpy_helper.from_array(value, full))
        assert np.array_equal(self._consts[full], value), f"constant {full} made twice with different values"
        return full

    def op(self, op_type: str, inputs: list[str], name: str, n_out: int = 1, **attrs) -> list[str]:
        outs = [f"{PREFIX}{name}" if n_out == 1 else f"{PREFIX}{name}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=PREFIX + name, **attrs))
        return outs

    def one(self, op_type: str, inputs: list[str], name: str, **attrs) -> str:
        return self.op(op_type, inputs, name, **attrs)[0]


def _i64(*values: int) -> np.ndarray:
    """An int64 constant (a 1-element vector for one value, as Slice/TopK/axes inputs want)."""
    return np.array(values, dtype=np.int64)


def _f32(value: float) -> np.ndarray:
    """A float32 scalar constant."""
    return np.array(value, dtype=np.float32)


def _check_args(model: onnx.ModelProto, conf: float, iou: float, max_det: int) -> onnx.ValueInfoProto:
    """Validate arguments and return the ``output0`` value info."""
    Thresholds(conf, iou, max_det).validate()
    if (opset_of(model) or 0) < MIN_OPSET:
        raise CloExportError(
            f"in-graph NMS needs ONNX opset >= {MIN_OPSET}, model has {opset_of(model)}; re-export with --opset 17"
        )
    names = [o.name for o in model.graph.output]
    if any(name in names for name in NMS_OUTPUTS):
        raise CloExportError(
            "model already has NMS outputs (num_dets/boxes/scores/classes); append NMS to the raw export only"
        )
    out = next((o for o in model.graph.output if o.name == "output0"), None)
    if out is None:
        raise CloExportError(f"model has no 'output0' output (outputs: {names}); append NMS to a clo-export onnx model")
    dims = out.type.tensor_type.shape.dim
    if len(dims) != 3 or not dims[2].HasField("dim_value") or dims[2].dim_value < 6:
        raise CloExportError("'output0' must be (B, N, 5+nc) with a fixed last dim; re-export with clo-export onnx")
    if out.type.tensor_type.elem_type not in (TensorProto.FLOAT, TensorProto.FLOAT16):
        raise CloExportError("'output0' must be float32 or float16 for in-graph NMS")
    return out


def append_nms(
    model: onnx.ModelProto, conf: float = DEFAULT.conf, iou: float = DEFAULT.iou, max_det: int = DEFAULT.max_det
) -> onnx.ModelProto:
    """Return a copy of `model` whose outputs are num_dets/boxes/scores/classes after YOLOv5 NMS."""
    out0 = _check_args(model, conf, iou, max_det)
    dims = out0.type.tensor_type.shape.dim
    n_boxes = dims[1].dim_value if dims[1].HasField("dim_value") else None
    k = min(max_det, n_boxes) if n_boxes else max_det  # TopK needs k <= N; pad the rest
    b = _Builder()
    y = "output0"
    if out0.type.tensor_type.elem_type == TensorProto.FLOAT16:
        y = b.one("Cast", [y], "to_fp32", to=TensorProto.FLOAT)
    best, best_cls, nms_scores = _class_scores(b, y, nc=dims[2].dim_value - 5)
    boxes = _xyxy(b, y)
    selected = b.one(
        "NonMaxSuppression",
        [
            boxes,
            nms_scores,
            b.const("max_per_class", _i64(max_det)),
            b.const("iou", _f32(iou)),
            b.const("conf", _f32(conf)),
        ],
        "nms",
        center_point_box=0,
    )  # (K, 3): [batch, class, box]
    finals = _top_k(b, selected, best, best_cls, boxes, k)
    _pad(b, finals, k, max_det)
    for name, src in finals.items():
        b.nodes.append(helper.make_node("Identity", [src], [name], name=f"{PREFIX}{name}"))
    return _with_nms_outputs(model, b, dims[0].dim_param or dims[0].dim_value or "batch", max_det)


def _cut(b: _Builder, src: str, name: str, start: int, end: int) -> str:
    """Slice `src` along the last axis (``output0``'s box fields)."""
    ax2 = b.const("axis2", _i64(2))
    return b.one("Slice", [src, b.const(f"{name}_start", _i64(start)), b.const(f"{name}_end", _i64(end)), ax2], name)


def _class_scores(b: _Builder, y: str, nc: int) -> tuple[str, str, str]:
    """Score = obj * cls and the best class per box; returns (best (B,N,1), best_cls (B,N,1), scores (B,nc,N))."""
    obj, cls = _cut(b, y, "obj", 4, 5), _cut(b, y, "cls", 5, 5 + nc)
    cls_scores = b.one("Mul", [cls, obj], "cls_scores")  # (B, N, nc), YOLOv5: x[:, 5:] *= x[:, 4:5]
    best_cls = b.one("ArgMax", [cls_scores], "best_cls", axis=2, keepdims=1)  # (B, N, 1) int64
    best = b.one("GatherElements", [cls_scores, best_cls], "best_score", axis=2)  # (B, N, 1)
    in_class = b.one("Equal", [best_cls, b.const("class_ids", np.arange(nc, dtype=np.int64))], "in_class")
    per_class = b.one("Where", [in_class, best, b.const("zero", _f32(0.0))], "per_class")  # (B, N, nc)
    return best, best_cls, b.one("Transpose", [per_class], "nms_scores", perm=[0, 2, 1])  # (B, nc, N)


def _xyxy(b: _Builder, y: str) -> str:
    """Boxes xywh -> xyxy (YOLOv5 xywh2xyxy: x -/+ w / 2), (B, N, 4)."""
    xy, wh = _cut(b, y, "xy", 0, 2), _cut(b, y, "wh", 2, 4)
    half = b.one("Mul", [wh, b.const("half", _f32(0.5))], "half_wh")
    return b.one("Concat", [b.one("Sub", [xy, half], "x1y1"), b.one("Add", [xy, half], "x2y2")], "xyxy", axis=2)


def _top_k(b: _Builder, selected: str, best: str, best_cls: str, boxes: str, k: int) -> dict[str, str]:
    """Kept scores scattered into a (B, N) buffer, then the top k per image, masked past ``num_dets``."""
    ax1, ax2, zero = b.const("axis1", _i64(1)), b.const("axis2", _i64(2)), b.const("zero", _f32(0.0))
    batch_box = b.one("Gather", [selected, b.const("batch_box_cols", _i64(0, 2))], "batch_box", axis=1)  # (K, 2)
    best_bn = b.one("Squeeze", [best, ax2], "best_bn")
    kept_src = b.one("GatherND", [best_bn, batch_box], "kept_src")  # (K,)
    empty = b.one("Mul", [best_bn, zero], "empty")  # zeros (B, N) without reading a shape
    kept = b.one("ScatterND", [empty, batch_box, kept_src], "kept")
    top_scores, top_idx = b.op("TopK", [kept, b.const("k", _i64(k))], "topk", n_out=2, axis=1, largest=1, sorted=1)
    valid = b.one("Greater", [top_scores, zero], "valid")  # (B, k)

    count = b.one("ReduceSum", [b.one("Cast", [valid], "valid_f", to=TensorProto.FLOAT), ax1], "count", keepdims=1)
    num_dets = b.one("Cast", [count], "num_dets_i32", to=TensorProto.INT32)
    top_idx3 = b.one("Unsqueeze", [top_idx, ax2], "top_idx3")
    top_boxes = b.one("GatherND", [boxes, top_idx3], "top_boxes", batch_dims=1)  # (B, k, 4)
    top_boxes = b.one("Where", [b.one("Unsqueeze", [valid, ax2], "valid3"), top_boxes, zero], "boxes_masked")
    best_cls_bn = b.one("Squeeze", [best_cls, ax2], "best_cls_bn")
    top_cls = b.one("GatherElements", [best_cls_bn, top_idx], "top_cls", axis=1)
    top_cls = b.one(
        "Cast",
        [b.one("Where", [valid, top_cls, b.const("zero_i64", _i64(0))], "cls_masked")],
        "cls_i32",
        to=TensorProto.INT32,
    )
    return {"num_dets": num_dets, "boxes": top_boxes, "scores": top_scores, "classes": top_cls}


def _pad(b: _Builder, finals: dict[str, str], k: int, max_det: int) -> None:
    """Fewer candidate boxes than max_det: pad the outputs to the fixed size."""
    if k >= max_det:
        return
    extra = max_det - k
    pad2 = b.const("pad2", _i64(0, 0, 0, extra))
    finals["boxes"] = b.one("Pad", [finals["boxes"], b.const("pad3", _i64(0, 0, 0, 0, extra, 0))], "pad_boxes")
    finals["scores"] = b.one("Pad", [finals["scores"], pad2], "pad_scores")
    finals["classes"] = b.one("Pad", [finals["classes"], pad2], "pad_classes")


def _with_nms_outputs(model: onnx.ModelProto, b: _Builder, batch: int | str, max_det: int) -> onnx.ModelProto:
    """A copy of `model` with the NMS nodes appended and the four NMS outputs as its only outputs."""
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    graph.node.extend(b.nodes)
    graph.initializer.extend(b.inits)
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("num_dets", TensorProto.INT32, [batch, 1]),
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [batch, max_det, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [batch, max_det]),
            helper.make_tensor_value_info("classes", TensorProto.INT32, [batch, max_det]),
        ]
    )
    return result


def has_nms_tail(model: onnx.ModelProto) -> bool:
    """True when ``model`` carries the NMS tail :func:`append_nms` writes."""
    return any(node.name.startswith(PREFIX) for node in model.graph.node)


def without_nms(model: onnx.ModelProto) -> onnx.ModelProto:
    """The raw head of an in-graph NMS model: the same graph cut before its ``nms/`` tail, output ``output0``.

    Parity compares this pre-NMS tensor with the reference's (detections alone pass a model whose
    scores are all NaN: NMS keeps nothing on either side). ``output0`` keeps the network's precision.
    """
    if not has_nms_tail(model):
        raise CloExportError("the model has no in-graph NMS tail (nms/ nodes) to cut; compare it as it is")
    fp16 = any(node.name == f"{PREFIX}to_fp32" for node in model.graph.node)
    result = onnx.ModelProto()
    result.CopyFrom(model)
    graph = result.graph
    keep = [node for node in graph.node if not node.name.startswith(PREFIX)]
    del graph.node[:]
    graph.node.extend(keep)
    inits = [init for init in graph.initializer if not init.name.startswith(PREFIX)]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    del graph.output[:]
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    graph.output.append(helper.make_tensor_value_info("output0", elem, None))
    return result
