"""Range refinement: a range moves only when that cuts the box error significantly, on calibration images; the
written model carries the refined ranges and the report says what moved."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from clo_export.quantization.accuracy import Measured, Score
from clo_export.quantization.quantize import QuantizeOptions, quantize
from clo_export.quantization.refine import FACTORS, refine_ranges
from tests.helpers import small_onnx

BOXES = np.full(100, 10.0)  # 100 images of 10 FP32 boxes each
ALT = np.tile([1.0, -1.0], 50)  # a zero-sum per-image pattern


def _evaluator(best: dict[str, float], weight: dict[str, float], noise: dict[str, float], start: float = 10.0):
    """A stand-in for ONNX Runtime on calibration images: the box error grows with each range's log-distance from
    ``best`` (``weight`` % per unit), plus a zero-sum per-image pattern (``noise``) whose sign flips when a range
    rises above ``start``: it moves single images but not the mean, so such a move's cut has a large standard
    error."""
    calls = []

    def evaluate(ranges: dict[str, float]) -> Measured:
        calls.append(dict(ranges))
        err = 1.0 + sum(weight[t] * math.log(ranges[t] / best[t]) ** 2 for t in best)
        pattern = sum(noise[t] * (1.0 if ranges[t] > start else -1.0) for t in best) * ALT
        errors = np.full(100, err / 100 * 10) + pattern
        return Measured(Score(0.0, 0.0, 0.0, 0.0, 100 * errors.sum() / BOXES.sum()), errors, BOXES)

    return evaluate, calls


def test_a_range_moves_to_the_best_factor_when_the_cut_is_significant():
    ranges = {"a": 10.0, "b": 4.0}
    wider = 10.0 * max(FACTORS)
    evaluate, calls = _evaluator({"a": wider, "b": 4.0}, {"a": 20.0, "b": 20.0}, {"a": 0.0, "b": 0.0})
    r = refine_ranges(["a", "b"], ranges, evaluate, n_images=100)
    assert r.ranges == {"a": pytest.approx(wider), "b": 4.0}  # a: the widest factor is exact; b is already best
    assert [c.tensor for c in r.changes] == ["a"]
    assert r.changes[0].amax_from == 10.0 and r.changes[0].cut > 0 and r.changes[0].cut_se == pytest.approx(0, abs=1e-9)
    assert r.box_error_after < r.box_error_before and r.box_error_after == pytest.approx(1.0)
    assert ranges == {"a": 10.0, "b": 4.0}  # the caller's ranges are not changed
    assert len(calls) == r.evaluations == 1 + len(FACTORS) * 2 and r.tensors == 2
    assert "1 of 2 activation ranges moved" in r.summary() and "1.0" in r.summary()


def test_a_cut_within_the_noise_moves_nothing():
    """The best factor cuts the mean box error a little, but per image it moves by far more than it cuts."""
    wider = 10.0 * max(FACTORS)
    evaluate, _ = _evaluator({"a": wider}, {"a": 0.05}, {"a": 0.5})
    r = refine_ranges(["a"], {"a": 10.0}, evaluate, n_images=100)
    assert r.changes == [] and r.ranges == {"a": 10.0}
    evaluate, _ = _evaluator({"a": wider}, {"a": 0.05}, {"a": 0.0})  # the same cut without the noise: it moves
    assert refine_ranges(["a"], {"a": 10.0}, evaluate, n_images=100).ranges["a"] == pytest.approx(wider)


def test_later_tensors_are_measured_on_the_ranges_already_moved():
    narrower, wider = 10.0 * min(FACTORS), 4.0 * max(FACTORS)
    evaluate, calls = _evaluator({"a": narrower, "b": wider}, {"a": 20.0, "b": 20.0}, {"a": 0.0, "b": 0.0})
    r = refine_ranges(["a", "b"], {"a": 10.0, "b": 4.0}, evaluate, n_images=100)
    assert r.ranges == {"a": pytest.approx(narrower), "b": pytest.approx(wider)}
    assert all(c["a"] == pytest.approx(narrower) for c in calls[1 + len(FACTORS) :])


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("refine")
    shutil.copy(small_onnx(), root / "small.onnx")
    shutil.copytree(small_onnx().parent / "calib", root / "calib")
    opts = QuantizeOptions(num=16, holdout=6, target_drop=0.0, min_int8_share=1.0, min_agreement=0, min_holdout=6)
    return root, quantize(root / "small.onnx", root / "calib", opts=opts)  # no float site fits: the target is missed


def _scales(path) -> dict[str, float]:
    """Activation scales (weights have one per channel) by initializer name."""
    arrays = {t.name: numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer}
    return {k: float(v) for k, v in arrays.items() if k.endswith("_scale") and v.ndim == 0}


@pytest.mark.slow
def test_quantize_refines_on_calibration_images_and_writes_the_refined_ranges(small_run, tmp_path):
    root, r = small_run
    f = r.refinement
    assert (
        not r.choice.met and f is not None and f.n_images == len(r.split.calib) == 16 and f.tensors == r.n_qdq_tensors
    )
    assert f.box_error_after <= f.box_error_before
    info = json.loads(r.accuracy_path.read_text())["refinement"]
    assert info["measured_on"] == "16 calibration images" and len(info["changes"]) == len(f.changes)
    scales = _scales(r.path)
    for c in f.changes:
        assert scales[f"{c.tensor}_scale"] == pytest.approx(c.amax_to / 127, rel=1e-6)
    off = quantize(
        root / "small.onnx",
        root / "calib",
        tmp_path / "off.int8.onnx",
        QuantizeOptions(
            num=16, holdout=6, target_drop=0.0, min_int8_share=1.0, min_agreement=0, min_holdout=6, refine_ranges=False
        ),
    )
    assert off.refinement is None and json.loads(off.accuracy_path.read_text())["refinement"] is None
    moved = {c.tensor for c in f.changes}
    unmoved = [t for t in f.ranges if f"{t}_scale" in scales and t not in moved]
    off_scales = _scales(off.path)
    assert len(unmoved) == f.tensors - len(moved) and all(
        scales[f"{t}_scale"] == off_scales[f"{t}_scale"] for t in unmoved
    )


@pytest.mark.slow
def test_a_model_within_the_target_is_not_refined(small_run, tmp_path):
    root, _ = small_run
    r = quantize(
        root / "small.onnx",
        root / "calib",
        tmp_path / "met.int8.onnx",
        QuantizeOptions(num=16, holdout=6, target_drop=50.0, min_agreement=0, min_holdout=6),
    )
    assert r.choice.met and r.refinement is None
