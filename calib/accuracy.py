"""FP32 vs INT8 on held-out images (ONNX Runtime CPU): output errors and detection agreement.

The FP32 model's detections are the reference ("ground truth"): precision/recall of the INT8
detections against them at IoU 0.5, and mAP@0.5 of the INT8 model (scored at conf 0.001, as
YOLOv5's val.py does) with the FP32 detections as labels. This measures what quantization
changed, not how good the model is; for that, run mAP on a labelled set.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from clo_export.compare import DETECTION_OUTPUT, DetectionAgreement, TensorStats, compare_outputs, detection_agreement, tensor_stats
from clo_export.errors import CloExportError
from clo_export.metrics import evaluate
from clo_export.postprocess import detections_from_nms_outputs, nms

MAP_CONF = 0.001


@dataclass
class AccuracyReport:
    """What INT8 changed relative to FP32 on ``n_images`` held-out images."""

    n_images: int
    tensors: dict[str, TensorStats]
    agreement: DetectionAgreement
    map50: float | None  # None when FP32 found nothing to compare against
    conf: float
    iou: float
    info: dict[str, Any] = field(default_factory=dict)  # method, attention mode, ...

    @property
    def score(self) -> float:
        """The agreement number --min-agreement is checked against: F1 of INT8 vs FP32 detections."""
        return self.agreement.f1

    def to_dict(self) -> dict[str, Any]:
        return {"n_images": self.n_images, "conf": self.conf, "iou_match": 0.5, "nms_iou": self.iou,
                "agreement_f1": self.score, "detections": asdict(self.agreement), "map50_vs_fp32": self.map50,
                "tensors": {k: {**asdict(s), "shape": list(s.shape)} for k, s in self.tensors.items()}, **self.info}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2) + "\n"


def _dets(outputs: dict[str, np.ndarray], conf: float, iou: float, nms_in_graph: bool) -> list[np.ndarray]:
    if nms_in_graph:
        return detections_from_nms_outputs(outputs)
    return nms(outputs[DETECTION_OUTPUT], conf, iou)


def accuracy_report(fp32_model: str | Path | bytes, int8_model: str | Path | bytes, data: Iterable[dict[str, np.ndarray]],
                    conf: float = 0.25, iou: float = 0.45, nms_in_graph: bool = False, threads: int | None = None,
                    info: dict[str, Any] | None = None) -> AccuracyReport:
    """Run both models on every feed and compare (see module docstring)."""
    from clo_export.backends.onnxrt import OnnxRuntimeRunner

    stats: dict[str, TensorStats] = {}
    ref_dets: list[np.ndarray] = []
    test_dets: list[np.ndarray] = []
    low_dets: list[np.ndarray] = []
    n = 0
    cpu = ["CPUExecutionProvider"]
    with OnnxRuntimeRunner(fp32_model, cpu, threads) as fp, OnnxRuntimeRunner(int8_model, cpu, threads) as q:
        for feed in data:
            ref, test = fp.infer(feed), q.infer(feed)
            n += len(next(iter(feed.values())))
            new = {k: tensor_stats(k, ref[k], test[k]) for k in ref if k in test and np.issubdtype(ref[k].dtype, np.floating)}
            if not nms_in_graph and DETECTION_OUTPUT in ref:
                new.update(compare_outputs({DETECTION_OUTPUT: ref[DETECTION_OUTPUT]}, {DETECTION_OUTPUT: test[DETECTION_OUTPUT]}, "int8").tensors)
            for k, s in new.items():
                stats[k] = stats[k].merge(s) if k in stats else s
            ref_dets += _dets(ref, conf, iou, nms_in_graph)
            batch_dets = _dets(test, conf, iou, nms_in_graph)
            test_dets += batch_dets
            low_dets += batch_dets if nms_in_graph else nms(test[DETECTION_OUTPUT], MAP_CONF, iou)
    if not n:
        raise CloExportError("no held-out image could be read for the accuracy report; add images to --calib")
    gts = [np.concatenate([d[:, 5:6], d[:, :4]], axis=1) for d in ref_dets]
    map50 = evaluate(low_dets, gts).map50 if sum(len(g) for g in gts) else None
    return AccuracyReport(n, stats, detection_agreement(ref_dets, test_dets, 0.5), map50, conf, iou, dict(info or {}))
