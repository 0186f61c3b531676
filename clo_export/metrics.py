"""Detection mAP in pure NumPy, under the two definitions users compare with.

- ``"yolov5"`` (the default): YOLOv5 ``val.py``. Per image and IoU threshold, same-class pairs
  above the threshold sorted by IoU, then one match per detection and per label
  (``process_batch``); AP is the area under the precision envelope, linearly interpolated at
  101 recall points and integrated with the trapezoid rule (``utils/metrics.py`` ``compute_ap``).
  A perfect detector scores 0.995 there, as in YOLOv5.
- ``"coco"``: pycocotools' COCOeval (bbox, area "all", 100 detections per image). Detections
  in score order each take the best free ground truth; AP is the mean envelope precision at the
  101 recall thresholds, a step function.

Both average over the classes that have ground truth. The same detections score 0.2-1.4 points
apart under the two, so every reported mAP says which definition it used.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from clo_export.errors import CloExportError
from clo_export.postprocess import box_iou

COCO_IOUS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
DEFINITIONS = ("yolov5", "coco")
DEFAULT_DEFINITION = "yolov5"
COCO_MAX_DETS = 100  # COCOeval's maxDets for the headline AP


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
    definition: str = DEFAULT_DEFINITION


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


def check_definition(definition: str) -> str:
    """``definition`` if it is one we compute, else a one-line error naming the choices."""
    if definition not in DEFINITIONS:
        raise CloExportError(f"unknown mAP definition '{definition}'; choose one of {', '.join(DEFINITIONS)}")
    return definition


def match_image(det: np.ndarray, gt: np.ndarray, iouv: np.ndarray, definition: str = DEFAULT_DEFINITION) -> np.ndarray:
    """(n_det, n_thr) true-positive flags of one image's detections, matched as ``definition`` does."""
    correct = np.zeros((len(det), len(iouv)), dtype=bool)
    if not len(det) or not len(gt):
        return correct
    iou = box_iou(gt[:, 1:5], det[:, :4])
    same = gt[:, 0:1] == det[None, :, 5]
    if check_definition(definition) == "coco":
        return _match_coco(det, iou, same, iouv)
    for t, thr in enumerate(iouv):
        g, d = np.nonzero((iou >= thr) & same)
        if not len(g):
            continue
        pairs = np.stack((g, d, iou[g, d]), 1)
        if len(pairs) > 1:  # val.py's process_batch: by IoU, then first per detection, then first per label
            pairs = pairs[pairs[:, 2].argsort()[::-1]]
            pairs = pairs[np.unique(pairs[:, 1], return_index=True)[1]]
            pairs = pairs[np.unique(pairs[:, 0], return_index=True)[1]]
        correct[pairs[:, 1].astype(int), t] = True
    return correct


def _match_coco(det: np.ndarray, iou: np.ndarray, same: np.ndarray, iouv: np.ndarray) -> np.ndarray:
    """COCOeval.evaluateImg: by score, each detection takes the free same-class GT of highest IoU >= t."""
    correct = np.zeros((len(det), len(iouv)), dtype=bool)
    order = np.argsort(-det[:, 4], kind="mergesort")
    iou = np.where(same, iou, -1.0)
    for t, thr in enumerate(iouv):
        free = np.ones(iou.shape[0], dtype=bool)
        for d in order:
            cand = np.where(free, iou[:, d], -1.0)
            m = len(cand) - 1 - int(np.argmax(cand[::-1]))  # ties go to the later GT, as in pycocotools
            if cand[m] >= min(thr, 1 - 1e-10):
                free[m] = False
                correct[d, t] = True
    return correct


def _coco_top(det: np.ndarray) -> np.ndarray:
    """One image's detections by score, at most COCO_MAX_DETS per class (COCOeval: maxDets per image and category)."""
    det = det[np.argsort(-det[:, 4], kind="mergesort")]
    keep = np.zeros(len(det), dtype=bool)
    for c in np.unique(det[:, 5]):
        keep[np.flatnonzero(det[:, 5] == c)[:COCO_MAX_DETS]] = True
    return det[keep]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    """Trapezoid-rule integral (np.trapezoid is NumPy >= 2 only, np.trapz is gone from 2.x)."""
    return float(np.sum((y[1:] + y[:-1]) * np.diff(x)) / 2)


def average_precision(tp: np.ndarray, n_gt: int, definition: str = DEFAULT_DEFINITION) -> np.ndarray:
    """AP per IoU threshold from (n, n_thr) TP flags sorted by score, under ``definition``."""
    ap = np.zeros(tp.shape[1])
    if not len(tp):  # a class with labels and no detections scores 0 under both
        return ap
    tpc = np.cumsum(tp, axis=0)
    precision = tpc / np.arange(1, len(tp) + 1)[:, None]
    if check_definition(definition) == "yolov5":
        recall = tpc / (n_gt + 1e-16)
        for t in range(tp.shape[1]):
            mrec = np.concatenate(([0.0], recall[:, t], [1.0]))
            mpre = np.concatenate(([1.0], precision[:, t], [0.0]))
            mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
            ap[t] = _trapezoid(np.interp(RECALL_POINTS, mrec, mpre), RECALL_POINTS)
        return ap
    envelope = np.maximum.accumulate(precision[::-1], axis=0)[::-1]
    recall = tpc / n_gt
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
    definition: str = DEFAULT_DEFINITION,
) -> MapResult:
    """mAP@0.5 and mAP@0.5:0.95 of per-image (n, 6) [x1, y1, x2, y2, conf, cls] against (m, 5) [cls, x1, y1, x2, y2].

    ``definition`` is ``"yolov5"`` (val.py, the default) or ``"coco"`` (pycocotools; keeps each
    image's 100 highest-scoring detections per class). Precision and recall are pooled over all classes at
    ``conf``, or at the score cut of highest F1 when ``conf`` is None, under either definition.
    """
    check_definition(definition)
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
    if definition == "coco":
        dets = [_coco_top(d) for d in dets]
    gts = [_as_rows(g, 5, "ground truths") for g in ground_truths]
    correct = np.concatenate(
        [match_image(d, g, iouv, definition) for d, g in zip(dets, gts)] + [np.zeros((0, len(iouv)), bool)]
    )
    all_dets = np.concatenate(dets + [np.zeros((0, 6))])
    gt_cls = np.concatenate([g[:, 0] for g in gts] + [np.zeros(0)])
    order = np.argsort(-all_dets[:, 4], kind="stable")
    correct, scores, det_cls = correct[order], all_dets[order, 4], all_dets[order, 5]

    classes, n_per_class = np.unique(gt_cls, return_counts=True)
    ap = np.array([average_precision(correct[det_cls == c], n, definition) for c, n in zip(classes, n_per_class)])
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
        definition=definition,
    )
