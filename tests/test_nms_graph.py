"""In-graph NMS (ONNX NonMaxSuppression) equals a NumPy YOLOv5 NMS reference, at batch 1 and symbolic batch."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from clo_export.errors import CloExportError
from clo_export.export.lint import lint
from clo_export.export.nms_graph import append_nms

N, NC = 200, 4


def _identity(batch: int | str, opset: int = 17, n: int = N, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """A stand-in detector: output0 = images, shaped (B, N, 5+nc)."""
    x = helper.make_tensor_value_info("images", dtype, [batch, n, 5 + NC])
    y = helper.make_tensor_value_info("output0", dtype, [batch, n, 5 + NC])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output0"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _decoded(rng: np.random.Generator, batch: int, n: int = N) -> np.ndarray:
    """Random decoded rows with heavy box overlap so NMS has work to do."""
    y = rng.random((batch, n, 5 + NC), dtype=np.float32)
    y[..., 0:2] = y[..., 0:2] * 120 + 10  # centres crowded in 130 px
    y[..., 2:4] = y[..., 2:4] * 50 + 10  # 10..60 px boxes
    return y


def _iou(box: np.ndarray, others: np.ndarray) -> np.ndarray:
    lt = np.maximum(box[:2], others[:, :2])
    rb = np.minimum(box[2:], others[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(others) - inter)


def reference_nms(
    y: np.ndarray, conf: float, iou: float, max_det: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """YOLOv5 detect NMS (multi_label=False), per image: (boxes xyxy, scores, classes) by score."""
    results = []
    for rows in y:
        cls_scores = rows[:, 5:] * rows[:, 4:5]
        cls, score = cls_scores.argmax(1), cls_scores.max(1)
        half = rows[:, 2:4] * np.float32(0.5)
        boxes = np.concatenate([rows[:, :2] - half, rows[:, :2] + half], axis=1)
        keep = []
        for c in np.unique(cls[score > conf]):
            idx = np.flatnonzero((cls == c) & (score > conf))
            idx = idx[np.argsort(-score[idx], kind="stable")]
            while idx.size:
                keep.append(idx[0])
                idx = idx[1:][_iou(boxes[idx[0]], boxes[idx[1:]]) <= iou]
        keep = np.array(keep, dtype=np.int64)
        keep = keep[np.argsort(-score[keep], kind="stable")][:max_det]
        results.append((boxes[keep], score[keep], cls[keep]))
    return results


def _run(model: onnx.ModelProto, y: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"images": y})))


def _assert_matches(out: dict[str, np.ndarray], y: np.ndarray, conf: float, iou: float, max_det: int) -> None:
    batch = y.shape[0]
    assert out["num_dets"].shape == (batch, 1) and out["num_dets"].dtype == np.int32
    assert out["boxes"].shape == (batch, max_det, 4) and out["boxes"].dtype == np.float32
    assert out["scores"].shape == (batch, max_det) and out["scores"].dtype == np.float32
    assert out["classes"].shape == (batch, max_det) and out["classes"].dtype == np.int32
    for b, (boxes, scores, classes) in enumerate(reference_nms(y, conf, iou, max_det)):
        n = int(out["num_dets"][b, 0])
        assert n == len(scores)
        np.testing.assert_array_equal(out["classes"][b, :n], classes)
        np.testing.assert_array_equal(out["boxes"][b, :n], boxes)
        np.testing.assert_allclose(out["scores"][b, :n], scores, rtol=0, atol=1e-6)
        assert not out["boxes"][b, n:].any() and not out["scores"][b, n:].any() and not out["classes"][b, n:].any()


@pytest.mark.parametrize("opset", [13, 17, 20, 21])
def test_batch1_matches_reference(opset):
    y = _decoded(np.random.default_rng(opset), 1)
    model = append_nms(_identity(1, opset), conf=0.25, iou=0.45, max_det=300)
    onnx.checker.check_model(model, full_check=True)
    assert model.opset_import[0].version == opset
    out = _run(model, y)
    assert 20 < out["num_dets"][0, 0] < N  # NMS both kept and suppressed boxes
    _assert_matches(out, y, 0.25, 0.45, 300)


def test_symbolic_batch_with_empty_frame_and_max_det_cut():
    rng = np.random.default_rng(1)
    y = _decoded(rng, 3)
    y[1, :, 4] *= 0.2  # obj <= 0.2 < conf: no detections in frame 1
    model = append_nms(_identity("batch"), conf=0.3, iou=0.5, max_det=10)
    assert [d.dim_param or d.dim_value for d in model.graph.output[1].type.tensor_type.shape.dim] == ["batch", 10, 4]
    out = _run(model, y)
    assert out["num_dets"][:, 0].tolist()[1] == 0
    assert out["num_dets"][0, 0] == out["num_dets"][2, 0] == 10  # cut at max_det
    _assert_matches(out, y, 0.3, 0.5, 10)
    _assert_matches(_run(model, y[:1]), y[:1], 0.3, 0.5, 10)  # same file, batch 1


@pytest.mark.parametrize("conf", [0.0, 1.0])
def test_the_ends_of_the_conf_range_match_the_reference(conf):
    """--conf 0 and 1 are allowed by the one [0, 1] rule of every command: the graph agrees with NumPy there too."""
    y = _decoded(np.random.default_rng(3), 2)
    out = _run(append_nms(_identity(2), conf=conf, iou=0.45, max_det=300), y)
    assert (out["num_dets"][:, 0] > 20).all() if conf == 0.0 else (out["num_dets"] == 0).all()
    _assert_matches(out, y, conf, 0.45, 300)


def test_fp16_output_and_fewer_boxes_than_max_det():
    y = _decoded(np.random.default_rng(2), 2, n=50)
    model = append_nms(_identity(2, n=50, dtype=TensorProto.FLOAT16), conf=0.1, iou=0.6, max_det=100)
    out = _run(model, y.astype(np.float16))
    assert out["boxes"].shape == (2, 100, 4)
    _assert_matches(out, y.astype(np.float16).astype(np.float32), 0.1, 0.6, 100)


def test_tail_passes_static_lint():
    for batch in (1, "batch"):
        model = append_nms(_identity(batch))
        assert lint(model) == []
        assert all(n.name.startswith("nms/") for n in model.graph.node[1:])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"conf": -0.1}, "--conf -0.1 must lie in"),
        ({"iou": 1.5}, "--iou 1.5 must lie in"),
        ({"max_det": 0}, "--max-det"),
    ],
)
def test_bad_arguments(kwargs, message):
    with pytest.raises(CloExportError, match=message):
        append_nms(_identity(1), **kwargs)


def test_refuses_old_opset_and_double_nms():
    with pytest.raises(CloExportError, match="opset >= 13"):
        append_nms(_identity(1, opset=12))
    with pytest.raises(CloExportError, match="already has NMS"):
        append_nms(append_nms(_identity(1)))
