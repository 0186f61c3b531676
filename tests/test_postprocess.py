"""NMS and box utilities against a loop-based reference written here, plus hand-built cases."""

from __future__ import annotations

import numpy as np
import pytest

from clo_export import postprocess
from clo_export.errors import CloExportError
from clo_export.postprocess import MAX_WH, box_iou, nms, xywh2xyxy


def _ref_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two xyxy boxes with plain floats, same operation order as the implementation."""
    area_a = (a[2] - a[0]) * (a[3] - a[1])
    area_b = (b[2] - b[0]) * (b[3] - b[1])
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


def _ref_candidates(img: np.ndarray, conf: float, multi_label: bool) -> list[tuple]:
    """(score, box, cls) per passing row/class, in row order, using float32 scalar arithmetic."""
    nc = img.shape[1] - 5
    cands = []
    for row in img:
        obj = row[4]
        if not obj > conf:
            continue
        x, y, w, h = row[0], row[1], row[2], row[3]
        box = (x - w / 2, y - h / 2, x + w / 2, y + h / 2)
        scores = [row[5 + c] * obj for c in range(nc)]
        if multi_label:
            cands += [(scores[c], box, c) for c in range(nc) if scores[c] > conf]
        else:
            best = max(range(nc), key=lambda c: scores[c])  # first maximal index, like argmax
            if scores[best] > conf:
                cands.append((scores[best], box, best))
    return cands


def ref_nms(pred, conf=0.25, iou=0.45, classes=None, agnostic=False, multi_label=False, max_det=300, max_nms=30000):
    """Straightforward loop version of YOLOv5's non_max_suppression."""
    multi_label = multi_label and pred.shape[2] > 6
    out = []
    for img in pred:
        cands = _ref_candidates(img, conf, multi_label)
        if classes is not None:
            cands = [c for c in cands if c[2] in classes]
        cands = sorted(cands, key=lambda c: -c[0])[:max_nms]  # Python's sort is stable
        offset_boxes = []
        for _, box, cls in cands:
            off = 0.0 if agnostic else float(cls) * MAX_WH
            offset_boxes.append(tuple(float(v) + off for v in box))
        suppressed = [False] * len(cands)
        keep = []
        for i in range(len(cands)):
            if suppressed[i]:
                continue
            keep.append(i)
            for j in range(i + 1, len(cands)):
                if not suppressed[j] and _ref_iou(offset_boxes[i], offset_boxes[j]) > iou:
                    suppressed[j] = True
        rows = [[*cands[i][1], cands[i][0], cands[i][2]] for i in keep[:max_det]]
        out.append(np.array(rows, dtype=np.float32).reshape(-1, 6))
    return out


def random_pred(rng: np.random.Generator, bs: int = 1, n: int = 300, nc: int = 80, levels: int = 0) -> np.ndarray:
    """Decoded-like predictions with clustered boxes; `levels` > 0 quantises scores to force exact ties."""
    pred = np.empty((bs, n, 5 + nc), dtype=np.float32)
    centres = rng.uniform(0, 640, (bs, 8, 2))
    pick = rng.integers(0, 8, (bs, n))
    pred[..., 0:2] = np.take_along_axis(centres, pick[..., None], 1) + rng.normal(0, 8, (bs, n, 2))
    pred[..., 2:4] = rng.uniform(20, 120, (bs, n, 2))
    if levels:
        pred[..., 4:] = rng.integers(1, levels + 1, (bs, n, 1 + nc)) / levels
    else:
        pred[..., 4:] = rng.uniform(0, 1, (bs, n, 1 + nc)) ** 3
    pred[..., 5:] *= rng.uniform(0, 1, (bs, n, nc)) < 3 / nc  # a few plausible classes per row, as in real heads
    return pred


def assert_same(got: list[np.ndarray], want: list[np.ndarray]) -> None:
    """Identical per-image results: same rows, same order, same bits."""
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == np.float32 and g.shape[1] == 6
        assert np.array_equal(g, w), f"\n{g}\n!=\n{w}"


CASES = {
    "default": {},
    "low_conf": dict(conf=0.05, iou=0.6),
    "multi_label": dict(multi_label=True, conf=0.3),
    "agnostic": dict(agnostic=True),
    "classes": dict(classes=[0, 3, 7]),
    "max_det": dict(max_det=3, conf=0.05),
    "max_nms": dict(max_nms=10, conf=0.05),
    "iou_zero": dict(iou=0.0),
    "iou_one": dict(iou=1.0),
}


@pytest.mark.parametrize("budget", [postprocess.PAIR_BUDGET, 0], ids=["pairs", "box-by-box"])
@pytest.mark.parametrize("nc", [1, 8, 80])
@pytest.mark.parametrize("levels", [0, 4], ids=["continuous", "ties"])
@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_nms_matches_reference(case: str, levels: int, nc: int, budget: int, monkeypatch) -> None:
    monkeypatch.setattr(postprocess, "PAIR_BUDGET", budget)  # 0: every frame takes the dense-frame path
    kw = CASES[case]
    rng = np.random.default_rng([list(CASES).index(case), levels, nc])
    pred = random_pred(rng, bs=3, n=150, nc=nc, levels=levels)
    our_kw = {{"conf": "conf_thres", "iou": "iou_thres"}.get(k, k): v for k, v in kw.items()}
    assert_same(nms(pred, **our_kw), ref_nms(pred, **kw))


@pytest.mark.parametrize("budget", [postprocess.PAIR_BUDGET, 0], ids=["pairs", "box-by-box"])
@pytest.mark.parametrize("iou", [0.0, 0.45])
def test_nms_matches_reference_on_shared_edges_and_empty_boxes(iou: float, budget: int, monkeypatch) -> None:
    """Coordinates on a coarse grid (many equal x1, touching edges) and zero-size boxes."""
    monkeypatch.setattr(postprocess, "PAIR_BUDGET", budget)
    rng = np.random.default_rng(11)
    pred = random_pred(rng, bs=2, n=400, nc=3)
    pred[..., :4] = np.round(pred[..., :4] / 16) * 16
    pred[:, ::7, 2] = 0.0  # zero width: never overlaps anything
    assert_same(nms(pred, iou_thres=iou, conf_thres=0.05), ref_nms(pred, iou=iou, conf=0.05))


def test_nms_empty_frames() -> None:
    pred = random_pred(np.random.default_rng(1), bs=2, n=50, nc=80)
    pred[0, :, 4] = 0.1  # nothing above conf in image 0
    out = nms(pred)
    assert out[0].shape == (0, 6) and out[0].dtype == np.float32
    assert_same(out, ref_nms(pred))
    assert all(o.shape == (0, 6) for o in nms(np.zeros((2, 0, 85), np.float32)))


def test_nms_ties_keep_input_order() -> None:
    pred = np.zeros((1, 3, 7), np.float32)
    pred[0, :, :4] = [[100, 100, 50, 50], [102, 100, 50, 50], [300, 300, 20, 20]]
    pred[0, :, 4] = 0.9
    pred[0, :, 5] = 1.0
    out = nms(pred)[0]
    np.testing.assert_array_equal(out[:, 0], [75, 290])  # first of the tied overlapping pair survives
    pred[0, [0, 1]] = pred[0, [1, 0]]
    np.testing.assert_array_equal(nms(pred)[0][:, 0], [77, 290])


def _two_boxes(cls_a: int, cls_b: int) -> np.ndarray:
    """Two heavily overlapping boxes (IoU ~0.82) with scores 0.9 and 0.8."""
    pred = np.zeros((1, 2, 5 + 3), np.float32)
    pred[0, :, :4] = [[100, 100, 40, 40], [104, 100, 40, 40]]
    pred[0, :, 4] = [0.9, 0.8]
    pred[0, 0, 5 + cls_a] = 1.0
    pred[0, 1, 5 + cls_b] = 1.0
    return pred


def test_nms_same_class_overlap_keeps_best() -> None:
    out = nms(_two_boxes(1, 1))[0]
    np.testing.assert_allclose(out, [[80, 80, 120, 120, 0.9, 1]])


def test_nms_different_classes_both_kept_unless_agnostic() -> None:
    pred = _two_boxes(0, 2)
    np.testing.assert_allclose(nms(pred)[0][:, 5], [0, 2])
    np.testing.assert_allclose(nms(pred, agnostic=True)[0][:, 4], [0.9])


def test_nms_multi_label_emits_every_class_above_conf() -> None:
    pred = np.zeros((1, 1, 8), np.float32)
    pred[0, 0] = [50, 50, 10, 10, 1.0, 0.9, 0.2, 0.6]
    out = nms(pred, multi_label=True)[0]
    np.testing.assert_allclose(out[:, 4:], [[0.9, 0], [0.6, 2]])
    assert len(nms(pred)[0]) == 1


def test_nms_rejects_bad_input() -> None:
    with pytest.raises(CloExportError, match="batch"):
        nms(np.zeros((100, 85), np.float32))
    with pytest.raises(CloExportError, match="conf_thres"):
        nms(np.zeros((1, 100, 85), np.float32), conf_thres=1.5)


def test_xywh2xyxy() -> None:
    np.testing.assert_array_equal(xywh2xyxy(np.array([[10.0, 20.0, 4.0, 6.0]])), [[8, 17, 12, 23]])


def test_box_iou() -> None:
    a = np.array([[0, 0, 10, 10], [5, 5, 5, 5]], np.float32)
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]], np.float32)
    want = [[1.0, 50 / 150, 0.0], [0.0, 0.0, 0.0]]  # degenerate box: empty union -> 0
    np.testing.assert_allclose(box_iou(a, b), want)
    assert box_iou(a[:0], b).shape == (0, 3)
