"""The pipeline's live check: chosen frames compared with a PyTorch reference by the comparison runner."""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clo_export.artifacts import ModelInfo
from clo_export.backends.base import Runner
from clo_export.comparator import Comparator, Compared, Comparison, Feed, Outputs, raw_head_runner
from clo_export.data.preprocess import LetterboxInfo, scale_boxes
from clo_export.data.readers import Frame
from clo_export.report import Report

if TYPE_CHECKING:
    from clo_export.pipeline.options import InferOptions


@dataclass
class CheckedFrame:
    """One compared frame kept for the HTML report (the frames that disagree most)."""

    index: int
    path: str
    f1: float
    max_abs: float
    image: np.ndarray
    ref_dets: np.ndarray
    test_dets: np.ndarray


class Checker:
    """Compares the model's outputs for chosen frames with a PyTorch reference's (:mod:`clo_export.comparator`).

    Detections are compared at the deployment thresholds, or at the graph's own for a model with
    in-graph NMS; an ONNX with in-graph NMS also has its raw head (the graph cut before NMS, run by
    ONNX Runtime on the CPU) compared tensor by tensor. ``keep_worst`` frames with the lowest
    detection F1 (then largest difference) are kept with their images for the HTML report.
    """

    def __init__(
        self, reference: Runner, info: ModelInfo, opts: InferOptions, min_f1: float | None = None, keep_worst: int = 0
    ):
        thresholds = opts.thresholds.for_model(info)  # min_f1 (None: opts.min_f1, else the precision's)
        own_onnx = info.nms and info.path.endswith(".onnx") and Path(info.path).is_file()
        raw = raw_head_runner(info.path) if own_onnx else None
        self.comparator = Comparator(
            reference, Comparison(info.precision, thresholds, min_f1), raw.activate() if raw is not None else None
        )
        self.reports: list[Report] = []
        self.keep_worst = keep_worst
        self._worst: list[tuple] = []
        self._tie = itertools.count()

    def observe(self, frame: Frame, feed: Feed, test: Outputs, lb: LetterboxInfo) -> Report:
        """Compare one frame: ``feed`` its (1, 3, H, W) input, ``test`` the model's outputs for it."""
        compared = self.comparator.compare(feed, test)
        self.reports.append(compared.report)
        if self.keep_worst:
            self._keep(frame, compared, lb)
        return compared.report

    def _keep(self, frame: Frame, compared: Compared, lb: LetterboxInfo) -> None:
        report = compared.report
        f1 = report.detections.f1 if report.detections else 1.0
        max_abs = max((s.max_abs for s in report.tensors.values()), default=0.0)
        ref, test = (scale_boxes(d, lb) if len(d) else d for d in (compared.ref_dets[0], compared.test_dets[0]))
        item = (
            (-(1 - f1), -max_abs),
            next(self._tie),
            CheckedFrame(frame.index, frame.path, f1, max_abs, frame.image, ref, test),
        )
        if len(self._worst) < self.keep_worst:
            heapq.heappush(self._worst, item)
        elif item[0] < self._worst[0][0]:  # heap keeps the best of the worst on top
            heapq.heapreplace(self._worst, item)

    @property
    def report(self) -> Report | None:
        """All compared frames, accumulated (None when no frame was checked)."""
        return Report.accumulate(self.reports) if self.reports else None

    def worst(self) -> list[CheckedFrame]:
        """The kept frames, most disagreeing first."""
        return [item[2] for item in sorted(self._worst, key=lambda t: (t[0], t[1]))]

    def frame_f1s(self) -> list[float]:
        """Per checked frame detection F1, in order."""
        return [r.detections.f1 if r.detections else 1.0 for r in self.reports]
