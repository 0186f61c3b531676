"""FP32 vs INT8 on held-out images (ONNX Runtime CPU): what quantization changed, in the units users lose.

The FP32 model's detections at the deployment thresholds (``conf``, NMS ``iou``) are the ground
truth. Each model is then scored the way YOLOv5's val.py scores a model, at validation thresholds
(conf 0.001, NMS IoU 0.6, 300 detections): mAP@.5 and mAP@.5:.95. A trained FP32 model scores
about 1.0 against its own detections; the INT8 model's *drop* is FP32's score minus its own, and
its *agreement* (what ``--min-agreement`` checks, 0.95 by default) is its score over FP32's. Because the reference
boxes are FP32's, not hand labels, this drop is stricter than the drop against labels: a box that
moves by a few pixels loses the IoU 0.95 match even where it was no closer to the truth before
(on the demo data it is about twice the labelled drop).

The drop is a step function of the boxes (a box that moves by a pixel either keeps or loses its
IoU 0.95 match), so on a few hundred images two models with the same quantization noise differ by
a few tenths of a point. The decisions (range method, float sites) therefore use a continuous
measure of the same loss, the *box error*: the mean 1 - IoU between FP32's and INT8's boxes of the
same anchors, over the anchors FP32 scores at least ``conf`` (in-graph NMS models: the matched
detections, an unmatched FP32 box counting as IoU 0). On the demo model it orders candidate models
like the drop on 1000 unseen scenes does, without its noise.

The report adds the box-IoU statistics of matched INT8/FP32 pairs, the per-output errors, and
precision/recall/F1 at the deployment thresholds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from clo_export.comparator import run_feeds
from clo_export.errors import CloExportError
from clo_export.fileio import json_text
from clo_export.metrics import evaluate
from clo_export.postprocess import decoded_output, detections, has_nms_outputs, paired_iou, xywh2xyxy
from clo_export.report import (
    DetectionAgreement,
    TensorStats,
    _match_ious,
    detection_agreement,
    detection_stats,
    tensor_stats,
)
from clo_export.thresholds import DEFAULT

MAP_CONF = 0.001  # val.py's thresholds for mAP
MAP_IOU = 0.6
MAP_MAX_DET = 300
DEFAULT_MIN_AGREEMENT = 0.95  # INT8/FP32 mAP@.5:.95 against FP32's detections; below it quantize refuses


@dataclass(frozen=True)
class Score:
    """mAP of one model against FP32's detections on the held-out images, and the drop from FP32's own."""

    map50: float
    map50_95: float
    drop50: float  # points (x100)
    drop50_95: float
    box_error: float = 0.0  # % (x100): mean 1 - IoU of FP32/INT8 boxes (see the module docstring)


@dataclass(frozen=True)
class Measured:
    """A held-out score with the per-image sums behind its box error, so that the noise of a difference between two
    models on the same images can be estimated (:func:`clo_export.quantization.sensitivity.gain`)."""

    score: Score
    errors: np.ndarray  # per held-out image: sum of 1 - IoU over FP32's boxes
    boxes: np.ndarray  # per held-out image: FP32's boxes counted (the same for every model)


@dataclass(frozen=True)
class BoxIoU:
    """IoU of matched INT8/FP32 box pairs (matched at IoU >= 0.5, same class, deployment thresholds)."""

    n: int
    mean: float
    median: float
    p10: float
    min: float
    below_090: float  # share of pairs with IoU < 0.9

    @classmethod
    def of(cls, ious: list[float]) -> BoxIoU:
        if not ious:
            return cls(0, 1.0, 1.0, 1.0, 1.0, 0.0)
        a = np.asarray(ious)
        return cls(
            len(a),
            float(a.mean()),
            float(np.median(a)),
            float(np.percentile(a, 10)),
            float(a.min()),
            float((a < 0.9).mean()),
        )


@dataclass
class AccuracyReport:
    """What INT8 changed relative to FP32 on ``n_images`` held-out images (``not_measured``: why there are none)."""

    n_images: int
    tensors: dict[str, TensorStats]
    agreement: DetectionAgreement | None
    box_iou: BoxIoU | None
    int8: Score | None
    fp32: Score | None
    conf: float
    iou: float
    info: dict[str, Any] = field(default_factory=dict)  # method, attention mode, float nodes, ...
    not_measured: str | None = None

    @classmethod
    def unmeasured(cls, reason: str, conf: float, iou: float, info: dict[str, Any] | None = None) -> AccuracyReport:
        """A report with no numbers: no held-out image to measure on (``reason`` says why)."""
        return cls(0, {}, None, None, None, None, conf, iou, dict(info or {}), reason)

    @property
    def score(self) -> float | None:
        """The number --min-agreement is checked against: INT8's mAP@.5:.95 against FP32's detections, as a fraction
        of FP32's own (1.0: nothing lost; FP32 scores below 1 against itself where NMS at val thresholds keeps
        extra boxes); None when not measured."""
        if self.int8 is None or self.fp32 is None:
            return None
        return self.int8.map50_95 / self.fp32.map50_95 if self.fp32.map50_95 > 0 else 1.0

    @property
    def map50(self) -> float | None:
        return None if self.int8 is None else self.int8.map50

    def to_dict(self) -> dict[str, Any]:
        """Every field; the measured ones null (and ``not_measured`` the reason) when there were no held-out images."""
        i8 = self.int8
        return {
            "n_images": self.n_images,
            "not_measured": self.not_measured,
            "deploy_conf": self.conf,
            "deploy_nms_iou": self.iou,
            "map_thresholds": {"conf": MAP_CONF, "nms_iou": MAP_IOU, "max_det": MAP_MAX_DET},
            "agreement_map50_95": self.score,
            "int8_vs_fp32": _as_dict(i8),
            "fp32_vs_itself": _as_dict(self.fp32),
            "drop_map50_points": None if i8 is None else i8.drop50,
            "drop_map50_95_points": None if i8 is None else i8.drop50_95,
            "box_iou": _as_dict(self.box_iou),
            "detections_at_deploy": None if self.agreement is None else {"iou_match": 0.5, **asdict(self.agreement)},
            "tensors": {k: {**asdict(s), "shape": list(s.shape)} for k, s in self.tensors.items()},
            **self.info,
        }

    def to_json(self) -> str:
        """Strict JSON text of ``to_dict()`` (a non-finite value is null and named under ``non_finite``)."""
        return json_text(self.to_dict(), indent=2)


def _as_dict(value: Any) -> dict[str, Any] | None:
    return None if value is None else asdict(value)


class HeldOut:
    """The held-out feeds with FP32's outputs and detections computed once; scores candidate INT8 models."""

    def __init__(
        self,
        fp32_model: str | bytes,
        data: Iterable[dict[str, np.ndarray]],
        conf: float = DEFAULT.conf,
        iou: float = DEFAULT.iou,
        threads: int | None = None,
    ):
        self.conf, self.iou, self.threads = conf, iou, threads
        self.feeds = list(data)
        if not self.feeds:
            raise CloExportError("no held-out image could be read for the accuracy report; add images to --calib")
        self.ref = self._run(fp32_model)
        self.ref_dets = [d for out in self.ref for d in self._deploy_dets(out)]
        self.in_graph_nms = has_nms_outputs(self.ref[0])
        self.anchors = [] if self.in_graph_nms else [_confident(decoded_output(out), conf) for out in self.ref]
        self.labels = [np.concatenate([d[:, 5:6], d[:, :4]], axis=1) for d in self.ref_dets]
        self.fp32 = self._score([d for out in self.ref for d in self._val_dets(out)], None)

    @property
    def n_images(self) -> int:
        return len(self.ref_dets)

    @property
    def n_labels(self) -> int:
        return sum(len(x) for x in self.labels)

    def _deploy_dets(self, outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return detections(outputs, self.conf, self.iou, MAP_MAX_DET)

    @staticmethod
    def _val_dets(outputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return detections(outputs, MAP_CONF, MAP_IOU, MAP_MAX_DET)  # in-graph NMS keeps its own thresholds

    def _score(self, dets: list[np.ndarray], fp32: Score | None, box_error: float = 0.0) -> Score:
        if not self.n_labels:
            return Score(1.0, 1.0, 0.0, 0.0)  # FP32 found nothing: nothing to lose
        r = evaluate(dets, self.labels)
        if fp32 is None:
            return Score(r.map50, r.map50_95, 0.0, 0.0)
        return Score(r.map50, r.map50_95, 100 * (fp32.map50 - r.map50), 100 * (fp32.map50_95 - r.map50_95), box_error)

    def image_errors(self, outs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
        """Per held-out image: the sum of 1 - IoU of the test model's boxes against FP32's, and FP32's boxes counted."""
        if self.in_graph_nms:
            test = [d for out in outs for d in self._deploy_dets(out)]
            matched = [_match_ious(r, t, 0.5) for r, t in zip(self.ref_dets, test)]
            errors = [1 - np.asarray(m + [0.0] * (len(r) - len(m))) for r, m in zip(self.ref_dets, matched)]
        else:
            errors = [
                1 - paired_iou(boxes, xywh2xyxy(decoded_output(out)[index][:, :4]))
                for out, (index, boxes) in zip(outs, self.anchors)
            ]
        return np.array([e.sum() for e in errors], np.float64), np.array([e.size for e in errors], np.float64)

    def box_error(self, outs: list[dict[str, np.ndarray]]) -> float:
        """Mean 1 - IoU (%) of the test model's boxes against FP32's (see the module docstring)."""
        return _percent(*self.image_errors(outs))

    def _run(self, model: str | bytes) -> list[dict[str, np.ndarray]]:
        from clo_export.backends.onnxrt import OnnxRuntimeRunner

        with OnnxRuntimeRunner(model, ["CPUExecutionProvider"], self.threads) as runner:
            return list(run_feeds(runner, self.feeds))

    def score(self, model: str | bytes) -> Score:
        """mAP of ``model`` against FP32's detections, and its drop in points."""
        return self.measure(model).score

    def measure(self, model: str | bytes) -> Measured:
        """:meth:`score` with the per-image box errors behind it."""
        outs = self._run(model)
        errors, boxes = self.image_errors(outs)
        score = self._score([d for out in outs for d in self._val_dets(out)], self.fp32, _percent(errors, boxes))
        return Measured(score, errors, boxes)

    def measure_boxes(self, model: str | bytes) -> Measured:
        """:meth:`measure` without the mAP, which needs NMS at validation thresholds on every image (most of a small
        model's cost): the box error alone, its ``Score`` mAP fields NaN."""
        errors, boxes = self.image_errors(self._run(model))
        nan = float("nan")
        return Measured(Score(nan, nan, nan, nan, _percent(errors, boxes)), errors, boxes)

    def report(self, model: str | bytes, info: dict[str, Any] | None = None) -> AccuracyReport:
        """The full report for ``model``: scores, box IoU, per-output errors, agreement at deployment thresholds."""
        outs = self._run(model)
        stats: dict[str, TensorStats] = {}
        for ref, test in zip(self.ref, outs):
            new = {
                k: tensor_stats(k, ref[k], test[k])
                for k in ref
                if k in test and np.issubdtype(ref[k].dtype, np.floating)
            }
            if not has_nms_outputs(ref):
                new.update(detection_stats(decoded_output(ref), decoded_output(test)))
            for k, s in new.items():
                stats[k] = stats[k].merge(s) if k in stats else s
        test_dets = [d for out in outs for d in self._deploy_dets(out)]
        ious = [v for ref, test in zip(self.ref_dets, test_dets) for v in _match_ious(ref, test, 0.5)]
        int8 = self._score([d for out in outs for d in self._val_dets(out)], self.fp32, self.box_error(outs))
        return AccuracyReport(
            self.n_images,
            stats,
            detection_agreement(self.ref_dets, test_dets, 0.5),
            BoxIoU.of(ious),
            int8,
            self.fp32,
            self.conf,
            self.iou,
            dict(info or {}),
        )


def _percent(errors: np.ndarray, boxes: np.ndarray) -> float:
    """Box error (%) from per-image sums of 1 - IoU and box counts; 0 when FP32 has no box."""
    return 100 * float(errors.sum() / boxes.sum()) if boxes.sum() else 0.0


def _confident(decoded: np.ndarray, conf: float) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """Index of the anchors whose confidence (objectness x best class) is at least ``conf``, and their xyxy boxes."""
    score = decoded[..., 4] * decoded[..., 5:].max(-1)
    index = np.nonzero(score >= conf)
    return index, xywh2xyxy(decoded[index][:, :4])
