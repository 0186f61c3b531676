"""YOLOv5's NMS (clo_export.postprocess.nms) against an independent implementation: ONNX Runtime's NonMaxSuppression.

torchvision's ``batched_nms`` would be the natural reference, but the only torchvision wheels our
package index serves are CUDA builds whose operators do not load beside the CPU torch we pin
("operator torchvision::nms does not exist"). ONNX Runtime's NonMaxSuppression kernel is the other
well-kept implementation at hand and the one TensorRT's INMSLayer mirrors: per class, greedy by
score, suppressing IoU > threshold. Both sides get the same candidates (objectness x class score
above ``conf``, the best class per row), so any difference is the suppression itself.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from clo_export.postprocess import nms, xywh2xyxy


def ort_nms_session(iou: float) -> ort.InferenceSession:
    """A one-node ONNX graph: NonMaxSuppression over boxes (1, N, 4) [y1, x1, y2, x2] and scores (1, C, N)."""
    node = helper.make_node(
        "NonMaxSuppression", ["boxes", "scores", "max_out", "iou", "score_thr"], ["selected"], center_point_box=0
    )
    graph = helper.make_graph(
        [node],
        "nms",
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, None, 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, None, None]),
        ],
        [helper.make_tensor_value_info("selected", TensorProto.INT64, [None, 3])],
        [
            helper.make_tensor("max_out", TensorProto.INT64, [1], [100000]),
            helper.make_tensor("iou", TensorProto.FLOAT, [1], [iou]),
            helper.make_tensor("score_thr", TensorProto.FLOAT, [1], [0.0]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def reference(session: ort.InferenceSession, img: np.ndarray, conf: float) -> set[tuple]:
    """ONNX Runtime's kept (class, x1, y1, x2, y2) for one image's decoded rows, candidates chosen as YOLOv5 does."""
    rows = img[img[:, 4] > conf]
    scores = rows[:, 5:] * rows[:, 4:5]
    cls = scores.argmax(1)
    best = scores[np.arange(len(rows)), cls]
    rows, cls, best = rows[best > conf], cls[best > conf], best[best > conf]
    boxes = xywh2xyxy(rows[:, :4])
    per_class = np.full((1, img.shape[1] - 5, len(rows)), -1.0, dtype=np.float32)  # other classes never selected
    per_class[0, cls, np.arange(len(rows))] = best
    yxyx = boxes[:, [1, 0, 3, 2]][None].astype(np.float32)
    selected = session.run(None, {"boxes": yxyx, "scores": per_class})[0]
    return {(int(c), *map(float, boxes[i])) for _, c, i in selected}


def ours(img: np.ndarray, conf: float, iou: float) -> set[tuple]:
    dets = nms(img[None], conf, iou, max_det=100000)[0]
    return {(int(d[5]), *map(float, d[:4])) for d in dets}


@pytest.mark.parametrize("iou", [0.3, 0.45, 0.7])
@pytest.mark.parametrize("nc", [1, 5, 80])
def test_nms_keeps_what_onnx_runtime_keeps_on_random_boxes(nc: int, iou: float) -> None:
    rng = np.random.default_rng(1000 * nc + int(iou * 100))
    session = ort_nms_session(iou)
    kept = 0
    for _ in range(20):
        n = int(rng.integers(50, 600))
        img = np.empty((n, 5 + nc), dtype=np.float32)
        img[:, 0:2] = rng.uniform(0, 640, (8, 2))[rng.integers(0, 8, n)] + rng.normal(0, 10, (n, 2))  # clusters
        img[:, 2:4] = rng.uniform(8, 160, (n, 2))
        img[:, 4:] = rng.uniform(0, 1, (n, 1 + nc))
        want = reference(session, img, 0.25)
        assert ours(img, 0.25, iou) == want
        kept += len(want)
    assert kept > 100  # the comparison had boxes to compare
