"""Detection mAP in pure NumPy: IoU-greedy matching per image and COCO's 101-point interpolated AP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clo_export.errors import CloExportError
from clo_export.postprocess import box_iou

COCO_IOUS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)


@dataclass(frozen=True)
class MapResult:
    """mAP over classes that have ground truth, plus pooled precision/recall at IoU 0.5 at `conf`."""

    map50: float
    map50_95: float
    ap50_per_class: dict[int, float]
    precision: float
    recall: float
    conf: float
    n_gt: int
    n_det: int


def _as_rows(a: np.ndarray, width: int, what: str) -> np.ndarray:
    """Validate and return `a` as a float64 (n, width) array; empty input of any shape gives (0, width)."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return a.reshape(0, width)
    if a.ndim != 2 or a.shape[1] != width:
        raise CloExportError(
            f"{what} must be (n, {width}) arrays, got shape {a.shape}; see clo_export.metrics.evaluate"
        )
    return a


def match_image(det: np.ndarray, gt: np.ndarray, iouv: np.ndarray) -> np.ndarray:
    """(n_det, n_thr) true-positive flags: same-class pairs matched greedily by IoU, each GT and det once."""
    correct = np.zeros((len(det), len(iouv)), dtype=bool)
    if not len(det) or not len(gt):
        return correct
    iou = box_iou(gt[:, 1:5], det[:, :4])
    g, d = np.nonzero((iou >= iouv.min()) & (gt[:, 0:1] == det[None, :, 5]))
    # Greedy over pairs by IoU (ties: higher score). The matches made while IoU >= t are exactly the
    # greedy matching at threshold t, so one pass serves every threshold.
    order = np.lexsort((-det[d, 4], -iou[g, d]))
    matched_iou = np.full(len(det), -1.0)
    gt_used = np.zeros(len(gt), dtype=bool)
    for k in order:
        if not gt_used[g[k]] and matched_iou[d[k]] < 0:
            gt_used[g[k]] = True
            matched_iou[d[k]] = iou[g[k], d[k]]
    return matched_iou[:, None] >= iouv[None, :]


def average_precision(tp: np.ndarray, n_gt: int) -> np.ndarray:
    """COCO AP per IoU threshold from (n, n_thr) TP flags sorted by score: mean envelope precision at 101 recalls."""
    tpc = np.cumsum(tp, axis=0)
    precision = tpc / np.arange(1, len(tp) + 1)[:, None]
    envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
    recall = tpc / n_gt
    ap = np.zeros(tp.shape[1])
    for t in range(tp.shape[1]):
        idx = np.searchsorted(recall[:, t], RECALL_POINTS, side="left")
        ap[t] = envelope[idx[idx < len(tp)], t].sum() / len(RECALL_POINTS)
    return ap


def _pr_at(tp50: np.ndarray, scores: np.ndarray, n_gt: int, conf: float | None) -> tuple[float, float, float]:
    """Pooled (precision, recall, conf) at `conf`, or at the score cut with the highest F1 when conf is None."""
    if not len(scores):
        return 0.0, 0.0, (0.0 if conf is None else conf)
    tpc = np.cumsum(tp50)
    n = np.arange(1, len(scores) + 1)
    if conf is None:
        cuts = np.flatnonzero(np.append(scores[1:] != scores[:-1], True))  # a threshold cannot split equal scores
        f1 = 2 * tpc[cuts] / (n[cuts] + n_gt)
        k = cuts[np.argmax(f1)]
        conf = float(scores[k])
    else:
        k = np.searchsorted(-scores, -conf, side="right") - 1
        if k < 0:
            return 0.0, 0.0, conf
    return float(tpc[k] / n[k]), (float(tpc[k] / n_gt) if n_gt else 0.0), conf


def evaluate(
    detections: Sequence[np.ndarray],
    ground_truths: Sequence[np.ndarray],
    iou_thresholds: np.ndarray = COCO_IOUS,
    conf: float | None = None,
) -> MapResult:
    """mAP@0.5 and mAP@0.5:0.95 of per-image (n, 6) [x1, y1, x2, y2, conf, cls] against (m, 5) [cls, x1, y1, x2, y2]."""
    if len(detections) != len(ground_truths):
        raise CloExportError(
            f"got detections for {len(detections)} images but ground truth for {len(ground_truths)}; "
            "pass one array per image to both"
        )
    iouv = np.asarray(iou_thresholds, dtype=np.float64)
    i50 = np.flatnonzero(np.isclose(iouv, 0.5))
    if not len(i50):
        raise CloExportError(f"iou_thresholds {iouv.tolist()} must include 0.5 (mAP@0.5 is always reported)")
    dets = [_as_rows(d, 6, "detections") for d in detections]
    gts = [_as_rows(g, 5, "ground truths") for g in ground_truths]
    correct = np.concatenate([match_image(d, g, iouv) for d, g in zip(dets, gts)] + [np.zeros((0, len(iouv)), bool)])
    all_dets = np.concatenate(dets + [np.zeros((0, 6))])
    gt_cls = np.concatenate([g[:, 0] for g in gts] + [np.zeros(0)])
    order = np.argsort(-all_dets[:, 4], kind="stable")
    correct, scores, det_cls = correct[order], all_dets[order, 4], all_dets[order, 5]

    classes, n_per_class = np.unique(gt_cls, return_counts=True)
    ap = np.array([average_precision(correct[det_cls == c], n) for c, n in zip(classes, n_per_class)])
    ap = ap.reshape(-1, len(iouv))
    precision, recall, conf = _pr_at(correct[:, i50[0]], scores, len(gt_cls), conf)
    return MapResult(
        map50=float(ap[:, i50[0]].mean()) if len(ap) else 0.0,
        map50_95=float(ap.mean()) if len(ap) else 0.0,
        ap50_per_class={int(c): float(a) for c, a in zip(classes, ap[:, i50[0]])},
        precision=precision,
        recall=recall,
        conf=conf,
        n_gt=len(gt_cls),
        n_det=len(all_dets),
    )
