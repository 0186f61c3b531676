"""mAP under YOLOv5's val.py definition and COCO's: hand-computed cases, and pycocotools itself."""

from __future__ import annotations

import numpy as np
import pytest

from clo_export.errors import CloExportError
from clo_export.metrics import evaluate, match_image

GT_A = [0, 0, 0, 100, 100]  # [cls, x1, y1, x2, y2]
GT_B = [0, 200, 200, 300, 300]


def det(box: list[float], conf: float, cls: int = 0) -> list[float]:
    """One detection row [x1, y1, x2, y2, conf, cls]."""
    return [*box, conf, cls]


def test_perfect_detections_score_one_or_0p995() -> None:
    gts = [np.array([GT_A, [3, 10, 10, 50, 50]]), np.array([GT_B])]
    dets = [np.array([det(GT_A[1:], 0.9), det([10, 10, 50, 50], 0.8, 3)]), np.array([det(GT_B[1:], 0.7)])]
    r = evaluate(dets, gts, definition="coco")
    assert (r.map50, r.map50_95, r.precision, r.recall) == (1.0, 1.0, 1.0, 1.0)
    assert r.ap50_per_class == {0: 1.0, 3: 1.0}
    assert (r.n_gt, r.n_det, r.conf, r.definition) == (3, 3, 0.7, "coco")
    # YOLOv5 closes the curve at (recall 1, precision 0): the last of the 100 trapezoids is half
    # height, so a perfect detector scores 0.99 + 0.01 / 2 = 0.995, as in val.py.
    r = evaluate(dets, gts)
    assert r.definition == "yolov5"
    assert (r.map50, r.map50_95) == (pytest.approx(0.995, abs=1e-12), pytest.approx(0.995, abs=1e-12))


def test_false_positive_ranked_above_true_positive() -> None:
    # Scores TP 0.9, FP 0.8, TP 0.7 over 2 GT -> precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
    # Envelope [1, 2/3, 2/3]: the 51 recall points 0.00..0.50 get 1, the 50 points 0.51..1.00 get 2/3,
    # so AP = (51 + 50 * 2/3) / 101 = 0.834983...
    gts = [np.array([GT_A, GT_B])]
    dets = [np.array([det(GT_A[1:], 0.9), det([400, 400, 450, 450], 0.8), det(GT_B[1:], 0.7)])]
    r = evaluate(dets, gts, definition="coco")
    want = (51 + 50 * 2 / 3) / 101
    assert r.map50 == pytest.approx(want) and r.map50_95 == pytest.approx(want)
    # YOLOv5: envelope 1 up to recall 0.5 and 2/3 after it, then 0 at recall 1, sampled at 0.00..1.00 and
    # integrated by trapezoids: 0.49 * 1 + 0.01 * (1 + 2/3) / 2 + 0.49 * 2/3 + 0.01 * (2/3) / 2 = 0.828333...
    want = 0.49 + 0.01 * (5 / 3) / 2 + 0.49 * 2 / 3 + 0.01 * (2 / 3) / 2
    assert evaluate(dets, gts).map50 == pytest.approx(want, abs=1e-12)
    # Best F1 keeps all three (2*2/(3+2) = 0.8 beats 2/3 at the first cut).
    assert (r.precision, r.recall, r.conf) == (pytest.approx(2 / 3), 1.0, 0.7)
    # At conf 0.85 only the first TP counts.
    r85 = evaluate(dets, gts, conf=0.85)
    assert (r85.precision, r85.recall, r85.conf) == (1.0, 0.5, 0.85)


def test_single_fp_above_tp_gives_half() -> None:
    # Precision [0, 1/2], recall [0, 1]: the envelope is 1/2 at every recall point -> COCO AP 0.5;
    # YOLOv5's last trapezoid falls to 0 at recall 1: 0.99 * 0.5 + 0.01 * 0.25 = 0.4975.
    dets, gts = [np.array([det([400, 400, 450, 450], 0.9), det(GT_A[1:], 0.8)])], [np.array([GT_A])]
    assert evaluate(dets, gts, definition="coco").map50 == pytest.approx(0.5)
    assert evaluate(dets, gts).map50 == pytest.approx(0.4975, abs=1e-12)


def test_missed_gt_halves_recall() -> None:
    # One of two GT found: recall 1/2, and only the 51 recall points 0.00..0.50 have precision 1.
    r = evaluate([np.array([det(GT_A[1:], 0.9)])], [np.array([GT_A, GT_B])], definition="coco")
    assert (r.precision, r.recall) == (1.0, 0.5)
    assert r.map50 == pytest.approx(51 / 101)
    # YOLOv5 interpolates linearly from (0.5, 1) to its (1, 0) sentinel: 0.5 + 0.5 * 0.5 / 2 = 0.75.
    assert evaluate([np.array([det(GT_A[1:], 0.9)])], [np.array([GT_A, GT_B])]).map50 == pytest.approx(0.75, abs=1e-12)


def test_iou_between_0p6_and_0p65_counts_at_three_thresholds() -> None:
    # IoU = 62.5 / 100 = 0.625 exactly (0.6 itself would sit on a threshold, where rounding decides):
    # a hit at 0.50, 0.55, 0.60 and a miss at 0.65..0.95 -> mAP50-95 = 3/10.
    r = evaluate([np.array([det([0, 0, 100, 62.5], 0.9)])], [np.array([GT_A])], definition="coco")
    assert r.map50 == 1.0
    assert r.map50_95 == pytest.approx(0.3)
    assert evaluate([np.array([det([0, 0, 100, 62.5], 0.9)])], [np.array([GT_A])]).map50_95 == pytest.approx(
        0.3 * 0.995
    )


def test_wrong_class_and_duplicates_are_false_positives() -> None:
    gts = [np.array([GT_A])]
    assert evaluate([np.array([det(GT_A[1:], 0.9, cls=1)])], gts).map50 == 0.0
    # A duplicate of the same GT is an FP; ranked below the TP it costs nothing in AP but halves precision.
    r = evaluate([np.array([det(GT_A[1:], 0.9), det([0, 0, 100, 95], 0.8)])], gts, conf=0.5)
    assert (r.map50, r.precision, r.recall) == (0.995, 0.5, 1.0)
    assert evaluate([np.array([det(GT_A[1:], 0.9), det([0, 0, 100, 95], 0.8)])], gts, definition="coco").map50 == 1.0


def test_matching_follows_each_definition() -> None:
    # Both detections overlap GT_A (IoU 0.8 and 0.99). COCO: by score, the 0.9 detection takes it.
    # YOLOv5's process_batch sorts pairs by IoU, keeps each detection's best pair, then per label the
    # first in detection order: also row 0. Add a GT that row 1 overlaps at 0.809 (row 0 at 0.636):
    # COCO gives it to row 1; YOLOv5 has already spent row 1 on GT_A, so row 1 stays unmatched.
    dets = np.array([det([0, 0, 100, 80], 0.9), det([0, 0, 100, 99], 0.5)])
    one = np.array([GT_A], float)
    for definition in ("yolov5", "coco"):
        np.testing.assert_array_equal(match_image(dets, one, np.array([0.5]), definition)[:, 0], [True, False])
    two = np.array([GT_A, [0, 0, 10, 100, 110]], float)
    np.testing.assert_array_equal(match_image(dets, two, np.array([0.5]), "yolov5")[:, 0], [True, False])
    np.testing.assert_array_equal(match_image(dets, two, np.array([0.5]), "coco")[:, 0], [True, True])


def test_classes_without_ground_truth_are_excluded() -> None:
    dets = [np.array([det(GT_A[1:], 0.9), det([300, 300, 350, 350], 0.95, cls=7)])]
    r = evaluate(dets, [np.array([GT_A])], conf=0.5, definition="coco")
    assert r.map50 == 1.0 and r.ap50_per_class == {0: 1.0}
    assert r.precision == 0.5  # the class-7 detection still counts as a false positive here


def test_empty_inputs() -> None:
    r = evaluate([], [])
    assert (r.map50, r.map50_95, r.precision, r.recall, r.n_gt, r.n_det) == (0.0, 0.0, 0.0, 0.0, 0, 0)
    no_gt = evaluate([np.array([det(GT_A[1:], 0.9)])], [np.zeros((0, 5))])
    assert (no_gt.map50, no_gt.ap50_per_class, no_gt.precision) == (0.0, {}, 0.0)
    no_det = evaluate([np.zeros((0, 6))], [np.array([GT_A])])
    assert (no_det.map50, no_det.recall, no_det.ap50_per_class) == (0.0, 0.0, {0: 0.0})
    assert evaluate([np.zeros(0)], [np.zeros(0)]).n_det == 0


def test_rejects_bad_input() -> None:
    with pytest.raises(CloExportError, match="one array per image"):
        evaluate([np.zeros((0, 6))], [])
    with pytest.raises(CloExportError, match=r"\(n, 6\)"):
        evaluate([np.zeros((2, 5))], [np.zeros((0, 5))])
    with pytest.raises(CloExportError, match="0.5"):
        evaluate([], [], iou_thresholds=np.array([0.75]))
    with pytest.raises(CloExportError, match="choose one of yolov5, coco"):
        evaluate([], [], definition="voc")


def random_scenes(seed: int, n_images: int = 60, nc: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Ground truth and imperfect detections: jittered hits, misses, duplicates, wrong classes, clutter."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n_images):
        m = int(rng.integers(0, 7))
        xy = rng.uniform(0, 500, (m, 2))
        wh = rng.uniform(10, 150, (m, 2))
        gt = np.column_stack([rng.integers(0, nc, m), xy, xy + wh])
        rows = []
        for g in gt:
            for _ in range(int(rng.choice([0, 1, 1, 1, 2]))):  # missed, found, or found twice
                jitter = rng.normal(0, 0.08, 4) * np.r_[g[3] - g[1], g[4] - g[2], g[3] - g[1], g[4] - g[2]]
                cls = g[0] if rng.random() > 0.1 else (g[0] + 1) % nc
                rows.append([*(g[1:5] + jitter), rng.uniform(0.05, 1.0), cls])
        for _ in range(int(rng.integers(0, 5))):
            x, y = rng.uniform(0, 550, 2)
            rows.append(
                [x, y, x + rng.uniform(5, 100), y + rng.uniform(5, 100), rng.uniform(0.001, 0.6), rng.integers(0, nc)]
            )
        gts.append(gt.reshape(-1, 5))
        dets.append(np.array(rows, dtype=np.float64).reshape(-1, 6))
    return dets, gts


def pycocotools_map(dets: list[np.ndarray], gts: list[np.ndarray], nc: int) -> tuple[float, float]:
    """(mAP@0.5, mAP@0.5:0.95) from COCOeval, bbox, area 'all', maxDets 100."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1, "width": 700, "height": 700} for i in range(len(gts))]
    anns = [
        {
            "id": len(anns_id) + 1,
            "image_id": i + 1,
            "category_id": int(g[0]) + 1,
            "iscrowd": 0,
            "bbox": [g[1], g[2], g[3] - g[1], g[4] - g[2]],
            "area": (g[3] - g[1]) * (g[4] - g[2]),
        }
        for anns_id in [[]]
        for i, gt in enumerate(gts)
        for g in gt
        if not anns_id.append(1)
    ]
    results = [
        {"image_id": i + 1, "category_id": int(d[5]) + 1, "bbox": [d[0], d[1], d[2] - d[0], d[3] - d[1]], "score": d[4]}
        for i, det in enumerate(dets)
        for d in det
    ]
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO()
        coco.dataset = {"images": images, "annotations": anns, "categories": [{"id": c + 1} for c in range(nc)]}
        coco.createIndex()
        e = COCOeval(coco, coco.loadRes(results), "bbox")
        e.evaluate()
        e.accumulate()
        e.summarize()
    return float(e.stats[1]), float(e.stats[0])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_definition_equals_pycocotools(seed) -> None:
    pytest.importorskip("pycocotools")
    dets, gts = random_scenes(seed)
    ours = evaluate(dets, gts, definition="coco")
    map50, map50_95 = pycocotools_map(dets, gts, 3)
    assert ours.map50 == pytest.approx(map50, abs=1e-4) and ours.map50_95 == pytest.approx(map50_95, abs=1e-4)
    # The same detections under val.py's definition: a different number, as users see between the tools.
    yolo = evaluate(dets, gts)
    assert abs(yolo.map50_95 - map50_95) > 1e-3


def test_coco_keeps_100_detections_per_image_and_class() -> None:
    pytest.importorskip("pycocotools")
    gt = np.array([[0, 0, 0, 50, 50]], float)
    clutter = [[200 + i, 200, 250 + i, 250, 0.9, 0] for i in range(120)] + [[300, 300, 350, 350, 0.95, 1]]
    dets = [np.array(clutter + [[0, 0, 50, 50, 0.5, 0]])]  # the hit ranks 121st in class 0: COCO never sees it
    assert (
        evaluate(dets, [gt], definition="coco").map50
        == pytest.approx(pycocotools_map(dets, [gt], 2)[0], abs=1e-4)
        == 0.0
    )
    assert evaluate(dets, [gt]).map50 > 0  # val.py scores every detection NMS kept
