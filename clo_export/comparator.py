"""The one comparison runner: a reference and a test model on the same feeds, judged by one rule.

The data protocol is Polygraphy's: an iterable of feeds, ``{input name: (batch, 3, H, W) array}``
dicts (parity batches, calibration and held-out data, pipeline frames). Each runner gets a feed
under its own input name (:func:`feed_for`), so no caller names a tensor. :class:`Comparison` is the
rule that turns one feed's pair of outputs into a :class:`~clo_export.report.Report`:

- a raw test model gets per-field tensor statistics and detection agreement at the deployment
  thresholds;
- a test model with in-graph NMS is judged on its detections against the reference's NMS at the
  thresholds the graph was built for (its padded, fixed-size outputs are no tensors to compare), and
  on its raw head: the pre-NMS ``output0`` of the same graph cut before the NMS tail, where the
  Comparator is given that cut (``raw``);
- any NaN or Inf in any output of either side fails; a reference with no detection on any input
  makes the Report inconclusive (:class:`~clo_export.report.Report`).

:class:`Comparator` runs the reference on each feed and judges the test's outputs for it: those of a
test runner it runs itself (export parity) or ones already computed (the pipeline's live check).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import Dict, Optional

import numpy as np

from clo_export.backends.base import Runner
from clo_export.errors import CloExportError
from clo_export.postprocess import NMS_OUTPUTS, detections, has_nms_outputs
from clo_export.report import TOLERANCES, Report, Tolerance, compare_tensors, detection_agreement, nonfinite_outputs
from clo_export.thresholds import Thresholds

Feed = Dict[str, np.ndarray]  # one input batch: {input name: array}
Outputs = Dict[str, np.ndarray]


def feed_for(runner: Runner, feed: Feed) -> Feed:
    """``feed`` under ``runner``'s input names (a one-input feed is renamed to a one-input model's name)."""
    names = [spec.name for spec in runner.input_specs()]
    if set(names) == set(feed):
        return feed
    if len(names) == 1 and len(feed) == 1:
        return {names[0]: next(iter(feed.values()))}
    raise CloExportError(
        f"the feed has inputs {sorted(feed)} but the {runner.name} model takes {names}; "
        "feed it the model's own input names"
    )


def run_feeds(runner: Runner, feeds: Iterable[Feed]) -> Iterator[Outputs]:
    """``runner``'s outputs for each feed, in order."""
    for feed in feeds:
        yield runner.infer(feed_for(runner, feed))


@dataclass(frozen=True)
class Compared:
    """One feed compared: its Report and both sides' per-image detections (letterboxed-input pixels)."""

    report: Report
    ref_dets: list
    test_dets: list


class Comparison:
    """The rule that judges a test model's outputs against the reference's for one feed (module docstring)."""

    def __init__(self, precision: str = "fp32", thresholds: Thresholds = Thresholds(), min_f1: Optional[float] = None):
        self.precision = precision if precision in TOLERANCES else "fp32"
        tolerance = TOLERANCES[self.precision]
        min_f1 = thresholds.min_f1 if min_f1 is None else min_f1
        self.tolerance: Tolerance = replace(tolerance, min_f1=min_f1) if min_f1 is not None else tolerance
        self.thresholds = thresholds

    def __call__(self, ref: Outputs, test: Outputs) -> Compared:
        t = self.thresholds
        test = {
            k: np.asarray(v, dtype=np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating) else v
            for k, v in test.items()
        }
        ref_dets = detections(ref, t.conf, t.iou, t.max_det)
        test_dets = detections(test, t.conf, t.iou, t.max_det)
        agreement = detection_agreement(ref_dets, test_dets)
        tensors = {k: v for k, v in test.items() if k not in NMS_OUTPUTS} if has_nms_outputs(test) else test
        report = (
            compare_tensors(ref, tensors, self.precision, self.tolerance)
            if tensors
            else Report(self.precision, self.tolerance)
        )
        report = replace(report, detections=agreement, nonfinite=nonfinite_outputs(ref, test))
        return Compared(report, ref_dets, test_dets)


class Comparator:
    """Runs ``reference`` on each feed and judges a test model's outputs for the same feed with ``comparison``.

    ``raw``, for a test model with in-graph NMS, is the same graph without its NMS tail
    (:func:`clo_export.export.nms_graph.without_nms`): its pre-NMS ``output0`` joins the test's
    outputs so the head's tensors are compared, not only the detections.
    """

    def __init__(self, reference: Runner, comparison: Comparison, raw: Optional[Runner] = None):
        self.reference = reference
        self.comparison = comparison
        self.raw = raw

    def compare(self, feed: Feed, test: Outputs) -> Compared:
        """Judge ``test``, a test model's outputs for ``feed`` (with the raw head's, where ``raw`` is given)."""
        if self.raw is not None:
            test = {**self.raw.infer(feed_for(self.raw, feed)), **test}
        return self.comparison(self.reference.infer(feed_for(self.reference, feed)), test)

    def run(self, test: Runner, feeds: Iterable[Feed]) -> Iterator[Compared]:
        """Run ``test`` and the reference on every feed; one Compared per feed, in order."""
        for feed in feeds:
            yield self.compare(feed, test.infer(feed_for(test, feed)))

    def report(self, test: Runner, feeds: Iterable[Feed]) -> Report:
        """The accumulated Report of :meth:`run`."""
        return Report.accumulate(c.report for c in self.run(test, feeds))


def raw_head_runner(model) -> Optional[Runner]:
    """An ONNX Runtime (CPU) runner on ``model`` (ONNX path or bytes) cut before its in-graph NMS; None without one."""
    from pathlib import Path

    import onnx

    from clo_export.backends.onnxrt import OnnxRuntimeRunner
    from clo_export.export.nms_graph import has_nms_tail, without_nms

    proto = onnx.load_from_string(model) if isinstance(model, bytes) else onnx.load(str(Path(model)))
    if not has_nms_tail(proto):
        return None
    return OnnxRuntimeRunner(without_nms(proto).SerializeToString(), providers=["CPUExecutionProvider"])
