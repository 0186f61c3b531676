"""Comparison result objects: tolerances, detection agreement, merging and JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from clo_export.errors import CloExportError
from clo_export.report import (
    TOLERANCES,
    DetectionAgreement,
    Report,
    Verdict,
    compare_outputs,
    detection_agreement,
    tensor_stats,
)


def yolo_output(seed: int = 0, n: int = 200, nc: int = 80) -> np.ndarray:
    """Decoded-like (1, n, 5 + nc) output with a handful of confident, well-separated boxes."""
    rng = np.random.default_rng(seed)
    out = np.zeros((1, n, 5 + nc), np.float32)
    out[0, :, :2] = rng.uniform(0, 640, (n, 2))
    out[0, :, 2:4] = rng.uniform(10, 60, (n, 2))
    out[0, :, 4:] = rng.uniform(0, 0.1, (n, 1 + nc))
    out[0, :10, 0] = np.arange(10) * 64 + 32
    out[0, :10, 1] = 320
    out[0, :10, 4] = 0.9
    out[0, np.arange(10), 5 + np.arange(10)] = 0.95
    return out


def outputs(seed: int = 0) -> dict[str, np.ndarray]:
    """A detection output plus one unrelated output."""
    feat = np.random.default_rng(seed).normal(size=(1, 8, 4, 4)).astype(np.float32)
    return {"output0": yolo_output(seed), "feat": feat}


def dets(*rows: list[float]) -> np.ndarray:
    """(n, 6) detections from rows [x1, y1, x2, y2, conf, cls]."""
    return np.array(rows, np.float32).reshape(-1, 6)


def test_identical_outputs_pass() -> None:
    ref = outputs()
    report = compare_outputs(ref, {k: v.copy() for k, v in ref.items()})
    assert report and report.failures == []
    assert set(report.tensors) == {"output0.boxes", "output0.objectness", "output0.classes", "feat"}
    assert all(s.max_abs == 0 and s.cosine == pytest.approx(1.0) for s in report.tensors.values())
    assert report.detections.f1 == 1.0 and report.detections.n_ref == 10


@pytest.mark.parametrize(
    ("col", "delta", "field"),
    [
        (slice(0, 4), 0.05, "output0.boxes"),  # 0.01 px + 1e-4 of a 10-60 px size is < 0.05
        (slice(4, 5), 1e-4, "output0.objectness"),
        (slice(5, None), 1e-4, "output0.classes"),
    ],
)
def test_perturbation_above_fp32_tolerance_names_the_field(col: slice, delta: float, field: str) -> None:
    ref = outputs()
    test = {k: v.copy() for k, v in ref.items()}
    test["output0"][..., col] += delta
    report = compare_outputs(ref, test, precision="fp32")
    assert not report
    assert len(report.failures) == 1 and report.failures[0].startswith(f"{field}: ")
    assert compare_outputs(ref, test, precision="fp16")  # the same drift is fine at fp16


def test_other_outputs_are_checked_too() -> None:
    ref = outputs()
    test = {**ref, "feat": ref["feat"] + 1e-3}
    assert compare_outputs(ref, test).failures == ["feat: max |diff| 0.001 > 0.0001 allowed for fp32"]


def test_int8_judges_only_detections() -> None:
    ref = outputs()
    test = {k: v.copy() for k, v in ref.items()}
    test["output0"][..., :4] += 1.0  # 1 px everywhere: big for tensors, irrelevant to matching
    test["feat"] += 5.0
    assert compare_outputs(ref, test, precision="int8")
    test["output0"][0, :5, 4] = 0.0  # half the detections vanish -> F1 2/3
    report = compare_outputs(ref, test, precision="int8")
    assert not report and report.failures[0].startswith("detections: F1 0.6667 < 0.9")


def test_nan_fails() -> None:
    ref = outputs()
    test = {k: v.copy() for k, v in ref.items()}
    test["output0"][0, 50, 0] = np.nan
    report = compare_outputs(ref, test)
    assert report.verdict is Verdict.FAILED and report.failures == ["test output 'output0' has 1 NaN values"]
    assert report.tensors["output0.boxes"].max_abs != report.tensors["output0.boxes"].max_abs  # the NaN diff is kept


@pytest.mark.parametrize("side", ["reference", "test"])
def test_nan_or_inf_on_either_side_fails_naming_the_output_and_the_side(side: str) -> None:
    ref, test = outputs(), outputs()
    bad = ref if side == "reference" else test
    bad["feat"][0, 0, 0, :2] = [np.inf, -np.inf]
    bad["feat"][0, 1, 0, 0] = np.nan
    report = compare_outputs(ref, test)
    assert not report and report.verdict is Verdict.FAILED
    assert report.failures == [f"{side} output 'feat' has 1 NaN and 2 Inf values"]
    assert report.describe() == f"failed: {side} output 'feat' has 1 NaN and 2 Inf values"
    total = Report.accumulate([report, report])  # counts pool over inputs and survive JSON
    assert total.nonfinite == {side: {"feat": (2, 4)}}
    back = Report.from_json(total.to_json())  # (NaN stats never compare equal: compare what JSON readers see)
    assert (back.nonfinite, back.failures) == (total.nonfinite, total.failures)
    assert json.loads(total.to_json())["verdict"] == "failed"


def test_nan_in_an_output_the_other_side_lacks_still_fails() -> None:
    ref = outputs()
    test = {**ref, "extra": np.array([np.nan], np.float32), "count": np.array([3], np.int32)}
    assert compare_outputs(ref, test).failures == ["test output 'extra' has 1 NaN values"]


def test_no_reference_detections_is_inconclusive_never_passed() -> None:
    ref = outputs()
    ref["output0"][..., 4] = 0.0  # nothing scores above conf
    report = compare_outputs(ref, {k: v.copy() for k, v in ref.items()})
    assert report.failures == [] and report.detections.f1 == 1.0  # agreement on two empty sets...
    assert not report and report.verdict is Verdict.INCONCLUSIVE  # ...proves nothing
    assert report.describe().startswith("inconclusive: the reference found no detections on any of 1 input(s)")
    data = json.loads(report.to_json())
    assert (data["verdict"], data["passed"], data["failures"]) == ("inconclusive", False, [])
    assert data["inconclusive"] == report.inconclusive
    assert Report.from_json(report.to_json()).verdict is Verdict.INCONCLUSIVE
    other = compare_outputs(outputs(1), {k: v.copy() for k, v in outputs(1).items()})
    assert Report.accumulate([report, other])  # boxes on any input make the pooled comparison conclusive


def test_test_boxes_without_reference_boxes_fail_and_nothing_compared_is_inconclusive() -> None:
    ref = outputs()
    ref["output0"][..., 4] = 0.0
    report = compare_outputs(ref, outputs())
    assert report.verdict is Verdict.FAILED and report.failures[-1].startswith("detections: F1 0.0000")
    empty = Report("fp32", TOLERANCES["fp32"], n_inputs=3)
    assert empty.verdict is Verdict.INCONCLUSIVE
    assert empty.describe() == "inconclusive: nothing was compared on 3 input(s)"


def test_missing_output_and_bad_arguments() -> None:
    ref = outputs()
    report = compare_outputs(ref, {"output0": ref["output0"]})
    assert report.failures == ["output 'feat' is missing from the test outputs"]
    with pytest.raises(CloExportError, match="shape"):
        compare_outputs(ref, {**ref, "output0": ref["output0"][:, :100]})
    with pytest.raises(CloExportError, match="fp32, fp16, int8"):
        compare_outputs(ref, ref, precision="bf16")


def test_tensor_stats_values() -> None:
    s = tensor_stats("x", np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert (s.max_abs, s.mean_abs, s.shape) == (1.0, pytest.approx(1 / 3), (3,))
    assert s.cosine == pytest.approx(17 / np.sqrt(14 * 21))  # dot 1+4+12, norms^2 14 and 21
    assert tensor_stats("z", np.zeros(3), np.zeros(3)).cosine == 1.0


def test_detection_agreement_hand_built() -> None:
    ref = [dets([0, 0, 10, 10, 0.9, 0], [20, 20, 30, 30, 0.8, 1])]
    # One match with IoU 80/100 = 0.8, and the same box as the second reference but with another class.
    test = [dets([0, 0, 10, 8, 0.7, 0], [20, 20, 30, 30, 0.8, 2])]
    a = detection_agreement(ref, test)
    assert (a.precision, a.recall, a.f1, a.n_ref, a.n_test, a.n_matched) == (0.5, 0.5, 0.5, 2, 2, 1)
    assert a.mean_iou == pytest.approx(0.8)
    # Below the IoU threshold nothing matches.
    assert detection_agreement(ref, test, iou=0.85).n_matched == 0


def test_detection_agreement_highest_score_matches_first() -> None:
    ref = [dets([0, 0, 10, 10, 0.9, 0])]
    test = [dets([0, 0, 10, 6, 0.5, 0], [0, 0, 10, 9, 0.6, 0])]  # IoU 0.6 and 0.9; the 0.6-score one wins
    a = detection_agreement(ref, test)
    assert (a.n_matched, a.precision, a.recall) == (1, 0.5, 1.0)
    assert a.mean_iou == pytest.approx(0.9)


def test_detection_agreement_empty_cases() -> None:
    both = detection_agreement([dets(), dets()], [dets(), dets()])
    assert (both.precision, both.recall, both.f1, both.mean_iou) == (1.0, 1.0, 1.0, 1.0)
    lost = detection_agreement([dets([0, 0, 10, 10, 0.9, 0])], [dets()])
    assert (lost.precision, lost.recall, lost.f1, lost.mean_iou) == (0.0, 0.0, 0.0, 0.0)
    extra = detection_agreement([dets()], [dets([0, 0, 10, 10, 0.9, 0])])
    assert (extra.precision, extra.recall, extra.f1) == (0.0, 0.0, 0.0)
    with pytest.raises(CloExportError, match="same inputs"):
        detection_agreement([dets()], [])


def test_accumulate_keeps_worst_and_pools() -> None:
    ref_a, ref_b = outputs(0), outputs(1)
    test_a = {k: v.copy() for k, v in ref_a.items()}
    test_b = {k: v.copy() for k, v in ref_b.items()}
    test_a["feat"][0, 0, 0, 0] += 4e-5
    test_b["feat"] += 2e-5
    test_b["output0"][0, 0, 4] = 0.0  # one detection lost in image b
    ra, rb = compare_outputs(ref_a, test_a), compare_outputs(ref_b, test_b)
    total = Report.accumulate([ra, rb])
    feat = total.tensors["feat"]
    assert feat.max_abs == pytest.approx(4e-5, rel=1e-3)
    assert feat.mean_abs == pytest.approx((ra.tensors["feat"].mean_abs + rb.tensors["feat"].mean_abs) / 2)
    assert feat.cosine == min(ra.tensors["feat"].cosine, rb.tensors["feat"].cosine) and feat.n == 2
    assert (total.detections.n_ref, total.detections.n_test, total.detections.n_matched) == (20, 19, 19)
    assert total.n_inputs == 2 and ra and not rb and not total
    with pytest.raises(CloExportError):
        Report.accumulate([])
    with pytest.raises(CloExportError, match="fp16"):
        ra.merge(compare_outputs(ref_a, test_a, precision="fp16"))


def test_json_round_trip() -> None:
    ref = outputs()
    test = {**ref, "feat": ref["feat"] + 1e-3}
    report = compare_outputs(ref, test)
    data = json.loads(report.to_json())
    assert data["passed"] is False and data["failures"] == report.failures
    assert Report.from_json(report.to_json()) == report
    assert Report.from_dict(report.to_dict()).tolerance == TOLERANCES["fp32"]
    assert DetectionAgreement(**data["detections"]) == report.detections


def test_fp32_box_limit_is_absolute_plus_relative_element_wise() -> None:
    ref = outputs()
    test = {k: v.copy() for k, v in ref.items()}
    test["output0"][0, :, 2:4] *= 1 + 5e-5  # sizes off by 5e-5 of their value: up to 0.003 px, within
    assert compare_outputs(ref, test)
    test["output0"][0, :, 2:4] = ref["output0"][0, :, 2:4] * 1.001  # 1e-3 of the value: out
    report = compare_outputs(ref, test)
    assert not report and report.failures[0].startswith("output0.boxes: |diff| exceeds 0.01 + 0.0001 x |value|")
    assert Report.from_dict(report.to_dict()).failures == report.failures  # the relative part survives JSON
