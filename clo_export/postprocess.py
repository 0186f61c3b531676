"""YOLOv5 box utilities, non-maximum suppression and model outputs → detections, in NumPy (runs where torch is absent).

Imports only errors.py, thresholds.py and (lazily) data/preprocess.py of the package: Triton's postprocessing
model vendors these four files.
"""

from __future__ import annotations

from collections.abc import Container, Sequence
from typing import TYPE_CHECKING

import numpy as np

from clo_export.errors import CloExportError
from clo_export.thresholds import DEFAULT, check_unit

if TYPE_CHECKING:
    from typing import Optional, Protocol, Tuple

    from clo_export.data.preprocess import LetterboxInfo

    class DetectOptions(Protocol):
        """What :class:`Postprocessor` reads (``clo_export.pipeline.InferOptions`` has it; Triton passes its own)."""

        conf: float
        iou: float
        max_det: int
        classes: Optional[Tuple[int, ...]]
        agnostic: bool


NMS_OUTPUTS = ("num_dets", "boxes", "scores", "classes")  # an in-graph NMS model's outputs
MAX_WH = 7680  # YOLOv5's class offset: larger than any box coordinate, so classes never overlap
PAIR_BUDGET = 1_000_000  # box pairs NMS compares at once; denser frames take the box-by-box loop (flat memory)


def xywh2xyxy(x: np.ndarray) -> np.ndarray:
    """Convert (..., 4) centre/size boxes to corner boxes (new array, same dtype)."""
    y = np.empty_like(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def paired_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of xyxy boxes ``a[..., :4]`` and ``b[..., :4]``, broadcast against each other, in float64; 0 where the
    union is empty (row i with row i for two (n, 4) arrays)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    w = (np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])).clip(min=0)
    h = (np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])).clip(min=0)
    inter = w * h
    union = (
        (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1]) + (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1]) - inter
    )
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU (n, m) of xyxy boxes `a` (n, 4) and `b` (m, 4) in float64; 0 where the union is empty."""
    return paired_iou(np.asarray(a)[:, None, :4], np.asarray(b)[None, :, :4])


def _overlapping_pairs(x1: np.ndarray, x2: np.ndarray, budget: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Every unordered pair (a, b) of boxes whose x-ranges may overlap, by a sweep over sorted x1.

    Pairs whose intersection has positive width are all included: sorted by x1, box b overlaps an
    earlier box a only if x1[a] <= x1[b] < x2[a], so each pair is found once, from the box that starts
    first. Most pairs of a frame's boxes (and all pairs of different classes, after the class
    offset) are never looked at. None when there are more than ``budget`` pairs.
    """
    n = len(x1)
    order = np.argsort(x1, kind="stable")
    ends = np.searchsorted(x1[order], x2[order], side="left")  # boxes that start before each one ends
    counts = np.maximum(ends - np.arange(1, n + 1), 0)
    total = int(counts.sum())
    if total > budget:
        return None
    first = np.repeat(np.arange(n), counts)
    step = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    return order[first], order[first + 1 + step]


def _greedy_nms_loop(
    x1: np.ndarray, y1: np.ndarray, x2: np.ndarray, y2: np.ndarray, iou_thres: float, max_det: int
) -> np.ndarray:
    """Greedy NMS box by box: each kept box against all boxes still left (for very dense frames)."""
    area = (x2 - x1) * (y2 - y1)
    order = np.arange(len(x1))
    keep = []
    with np.errstate(divide="ignore", invalid="ignore"):
        while order.size and len(keep) < max_det:
            i, rest = order[0], order[1:]
            keep.append(i)
            w = (np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest])).clip(min=0)
            h = (np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest])).clip(min=0)
            inter = w * h
            order = rest[~(inter / (area[i] + area[rest] - inter) > iou_thres)]
    return np.asarray(keep, dtype=np.intp)


def _greedy_nms(boxes: np.ndarray, iou_thres: float, max_det: int) -> np.ndarray:
    """Indices kept by greedy NMS over `boxes` already sorted by descending score (torchvision semantics).

    IoU is computed in float64 for the overlapping pairs only (up to PAIR_BUDGET of them, else box
    by box); a box is kept when no kept box before it overlaps it by more than `iou_thres` (an
    empty union gives NaN: never suppressed).
    """
    x1, y1, x2, y2 = (np.ascontiguousarray(boxes[:, k], dtype=np.float64) for k in range(4))
    n = len(boxes)
    pairs = _overlapping_pairs(x1, x2, PAIR_BUDGET)
    if pairs is None:
        return _greedy_nms_loop(x1, y1, x2, y2, iou_thres, max_det)
    a, b = pairs
    w = (np.minimum(x2[a], x2[b]) - np.maximum(x1[a], x1[b])).clip(min=0)
    h = (np.minimum(y2[a], y2[b]) - np.maximum(y1[a], y1[b])).clip(min=0)
    inter = w * h
    area = (x2 - x1) * (y2 - y1)
    with np.errstate(divide="ignore", invalid="ignore"):
        over = inter / (area[a] + area[b] - inter) > iou_thres
    a, b = a[over], b[over]
    src = np.concatenate([a, b])  # neighbour lists of every box, grouped by box (CSR)
    by_src = np.argsort(src)
    neighbours = np.concatenate([b, a])[by_src]
    starts = np.searchsorted(src[by_src], np.arange(n + 1)).tolist()
    suppressed = np.zeros(n, dtype=bool)
    keep: list[int] = []
    for i in range(n):
        if suppressed[i]:
            continue
        keep.append(i)
        if len(keep) == max_det:
            break
        if starts[i] != starts[i + 1]:
            suppressed[neighbours[starts[i] : starts[i + 1]]] = True
    return np.asarray(keep, dtype=np.intp)


def _candidates(x: np.ndarray, conf_thres: float, multi_label: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boxes (xyxy), scores and labels of one image's rows whose obj*cls score passes `conf_thres`."""
    x = x[x[:, 4] > conf_thres]
    scores = x[:, 5:] * x[:, 4:5]
    boxes = xywh2xyxy(x[:, :4])
    if multi_label:
        i, j = np.nonzero(scores > conf_thres)
        return boxes[i], scores[i, j], j
    j = scores.argmax(1)
    best = scores[np.arange(len(x)), j]
    keep = best > conf_thres
    return boxes[keep], best[keep], j[keep]


def _nms_image(
    x: np.ndarray,
    conf_thres: float,
    iou_thres: float,
    classes: Sequence[int] | None,
    agnostic: bool,
    multi_label: bool,
    max_det: int,
    max_nms: int,
) -> np.ndarray:
    """NMS for one image's (N, 5+nc) decoded rows; returns (n, 6) float32 [x1, y1, x2, y2, conf, cls]."""
    boxes, scores, labels = _candidates(x, conf_thres, multi_label)
    if classes is not None:
        keep = np.isin(labels, np.asarray(classes))
        boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
    order = np.argsort(-scores, kind="stable")[:max_nms]
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    offset = 0 if agnostic else labels[:, None].astype(np.float64) * MAX_WH
    keep = _greedy_nms(boxes + offset, iou_thres, max_det)
    out = np.empty((len(keep), 6), dtype=np.float32)
    out[:, :4] = boxes[keep]
    out[:, 4] = scores[keep]
    out[:, 5] = labels[keep]
    return out


def nms(
    pred: np.ndarray,
    conf_thres: float = DEFAULT.conf,
    iou_thres: float = DEFAULT.iou,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = DEFAULT.max_det,
    max_nms: int = 30000,
) -> list[np.ndarray]:
    """YOLOv5 non_max_suppression on decoded (bs, N, 5+nc) output: per image (n, 6) [x1, y1, x2, y2, conf, cls]."""
    check_unit("conf_thres", conf_thres)
    check_unit("iou_thres", iou_thres)
    pred = np.asarray(pred)
    if pred.ndim != 3 or pred.shape[2] < 6:
        raise CloExportError(
            f"nms expects decoded YOLOv5 output of shape (batch, anchors, 5 + classes), got {pred.shape}; "
            "export with the Detect head in inference mode (output0)"
        )
    pred = pred.astype(np.float32, copy=False)
    multi_label = multi_label and pred.shape[2] > 6
    return [_nms_image(x, conf_thres, iou_thres, classes, agnostic, multi_label, max_det, max_nms) for x in pred]


def detections_from_nms_outputs(outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Per-image (n, 6) [x1, y1, x2, y2, conf, cls] rows from an in-graph NMS model's fixed-size outputs."""
    num, boxes, scores, classes = (outputs[k] for k in NMS_OUTPUTS)
    out = []
    for b in range(len(num)):
        n = int(np.asarray(num[b]).reshape(-1)[0])
        rows = np.empty((n, 6), dtype=np.float32)
        rows[:, :4] = boxes[b, :n]
        rows[:, 4] = scores[b, :n]
        rows[:, 5] = classes[b, :n]
        out.append(rows)
    return out


def has_nms_outputs(outputs: Container[str]) -> bool:
    """True for a model with in-graph NMS: its outputs (or their names) hold num_dets, boxes, scores, classes."""
    return all(k in outputs for k in NMS_OUTPUTS)


def decoded_output(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """A raw model's decoded (batch, anchors, 5 + classes) output (YOLOv5's output0), found by its shape."""
    for value in outputs.values():
        if np.ndim(value) == 3 and np.shape(value)[2] >= 6:
            return value
    shapes = ", ".join(f"{k} {np.shape(v)}" for k, v in outputs.items())
    raise CloExportError(
        f"no output of shape (batch, anchors, 5 + classes) among {shapes or 'none'}; "
        "export with the Detect head in inference mode (output0) or with --nms"
    )


def detections(
    outputs: dict[str, np.ndarray],
    conf: float = DEFAULT.conf,
    iou: float = DEFAULT.iou,
    max_det: int = DEFAULT.max_det,
    classes: Sequence[int] | None = None,
    agnostic: bool = False,
) -> list[np.ndarray]:
    """Per-image (n, 6) [x1, y1, x2, y2, conf, cls] detections of any model's outputs.

    In-graph NMS outputs are read as the graph wrote them (its own thresholds); a raw model's decoded
    output goes through :func:`nms` at these thresholds.
    """
    if has_nms_outputs(outputs):
        return detections_from_nms_outputs(outputs)
    return nms(decoded_output(outputs), conf, iou, classes, agnostic, max_det=max_det)


class Postprocessor:
    """Model outputs → per-frame (n, 6) [x1, y1, x2, y2, conf, cls] in original-frame pixels."""

    def __init__(self, opts: DetectOptions):
        self.opts = opts

    def letterboxed(self, outputs: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
        """Detections of the first ``n`` images in letterboxed-input pixels."""
        o = self.opts
        dets = detections({k: v[:n] for k, v in outputs.items()}, o.conf, o.iou, o.max_det, o.classes, o.agnostic)
        if not has_nms_outputs(outputs):
            return dets
        out = []  # the graph applied its own thresholds; a higher --conf, --classes and --max-det filter more
        for d in dets:
            d = d[d[:, 4] >= o.conf]
            if o.classes is not None:
                d = d[np.isin(d[:, 5].astype(int), o.classes)]
            out.append(d[: o.max_det].astype(np.float32, copy=False))
        return out

    def __call__(self, outputs: dict[str, np.ndarray], infos: list[LetterboxInfo]) -> list[np.ndarray]:
        """Detections of every image mapped back onto its original frame."""
        from clo_export.data.preprocess import scale_boxes  # OpenCV: only where frames are processed, never for --help

        return [scale_boxes(d, info) if len(d) else d for d, info in zip(self.letterboxed(outputs, len(infos)), infos)]
