"""mAP evaluator on hand-computed cases."""

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


def test_perfect_detections_score_one() -> None:
    gts = [np.array([GT_A, [3, 10, 10, 50, 50]]), np.array([GT_B])]
    dets = [np.array([det(GT_A[1:], 0.9), det([10, 10, 50, 50], 0.8, 3)]), np.array([det(GT_B[1:], 0.7)])]
    r = evaluate(dets, gts)
    assert (r.map50, r.map50_95, r.precision, r.recall) == (1.0, 1.0, 1.0, 1.0)
    assert r.ap50_per_class == {0: 1.0, 3: 1.0}
    assert (r.n_gt, r.n_det, r.conf) == (3, 3, 0.7)


def test_false_positive_ranked_above_true_positive() -> None:
    # Scores TP 0.9, FP 0.8, TP 0.7 over 2 GT -> precision [1, 1/2, 2/3], recall [1/2, 1/2, 1].
    # Envelope [1, 2/3, 2/3]: the 51 recall points 0.00..0.50 get 1, the 50 points 0.51..1.00 get 2/3,
    # so AP = (51 + 50 * 2/3) / 101 = 0.834983...
    gts = [np.array([GT_A, GT_B])]
    dets = [np.array([det(GT_A[1:], 0.9), det([400, 400, 450, 450], 0.8), det(GT_B[1:], 0.7)])]
    r = evaluate(dets, gts)
    want = (51 + 50 * 2 / 3) / 101
    assert r.map50 == pytest.approx(want) and r.map50_95 == pytest.approx(want)
    # Best F1 keeps all three (2*2/(3+2) = 0.8 beats 2/3 at the first cut).
    assert (r.precision, r.recall, r.conf) == (pytest.approx(2 / 3), 1.0, 0.7)
    # At conf 0.85 only the first TP counts.
    r85 = evaluate(dets, gts, conf=0.85)
    assert (r85.precision, r85.recall, r85.conf) == (1.0, 0.5, 0.85)


def test_single_fp_above_tp_gives_half() -> None:
    # Precision [0, 1/2], recall [0, 1]: the envelope is 1/2 at every recall point -> AP 0.5.
    r = evaluate([np.array([det([400, 400, 450, 450], 0.9), det(GT_A[1:], 0.8)])], [np.array([GT_A])])
    assert r.map50 == pytest.approx(0.5)


def test_missed_gt_halves_recall() -> None:
    # One of two GT found: recall 1/2, and only the 51 recall points 0.00..0.50 have precision 1.
    r = evaluate([np.array([det(GT_A[1:], 0.9)])], [np.array([GT_A, GT_B])])
    assert (r.precision, r.recall) == (1.0, 0.5)
    assert r.map50 == pytest.approx(51 / 101)


def test_iou_between_0p6_and_0p65_counts_at_three_thresholds() -> None:
    # IoU = 62.5 / 100 = 0.625 exactly (0.6 itself would sit on a threshold, where rounding decides):
    # a hit at 0.50, 0.55, 0.60 and a miss at 0.65..0.95 -> mAP50-95 = 3/10.
    r = evaluate([np.array([det([0, 0, 100, 62.5], 0.9)])], [np.array([GT_A])])
    assert r.map50 == 1.0
    assert r.map50_95 == pytest.approx(0.3)


def test_wrong_class_and_duplicates_are_false_positives() -> None:
    gts = [np.array([GT_A])]
    assert evaluate([np.array([det(GT_A[1:], 0.9, cls=1)])], gts).map50 == 0.0
    # A duplicate of the same GT is an FP; ranked below the TP it costs nothing in AP but halves precision.
    r = evaluate([np.array([det(GT_A[1:], 0.9), det([0, 0, 100, 95], 0.8)])], gts, conf=0.5)
    assert (r.map50, r.precision, r.recall) == (1.0, 0.5, 1.0)


def test_greedy_matching_prefers_highest_iou() -> None:
    # Both detections overlap GT_A; the one with the higher IoU takes it even though it scores lower.
    dets = np.array([det([0, 0, 100, 80], 0.9), det([0, 0, 100, 99], 0.5)])
    correct = match_image(dets, np.array([GT_A], float), np.array([0.5]))
    np.testing.assert_array_equal(correct[:, 0], [False, True])


def test_classes_without_ground_truth_are_excluded() -> None:
    dets = [np.array([det(GT_A[1:], 0.9), det([300, 300, 350, 350], 0.95, cls=7)])]
    r = evaluate(dets, [np.array([GT_A])], conf=0.5)
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
