"""The FP32 and FP16 parity rules fail planted export defects, and pass correct exports, on real frames.

The rule's limits come from bench/parity_tolerance.py (1,000 real frames per model and size, zero
false failures). Here the bundled demo model runs on frames of the demo video; each defect is
planted in a copy of the model, as a broken export would carry it, and the copy's output is
compared with the correct model's under the FP32 rule. For FP16 the copy is exported ``--half`` and run by
ONNX Runtime, as ``clo-export onnx --half`` checks it (bench/parity_tolerance.py --fp16 measured that rule).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from clo_export.data.preprocess import preprocess_batch
from clo_export.demo.run import BUNDLED_MODEL
from clo_export.demo.shapes import make_video_frames
from clo_export.models.checkpoint import load
from clo_export.report import DETECTION_OUTPUT, TOLERANCES, Report, compare_outputs

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled demo model not built")


@pytest.fixture(scope="module")
def demo():
    return load(BUNDLED_MODEL).model


@pytest.fixture(scope="module")
def frames() -> np.ndarray:
    images = [f.image for f in make_video_frames(4, 3, (480, 640))]
    return preprocess_batch(images, (256, 256))[0]


def run(model, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


def fp32_report(ref: np.ndarray, test: np.ndarray):
    return compare_outputs({DETECTION_OUTPUT: ref}, {DETECTION_OUTPUT: test}, "fp32")


def anchor_off(model, rel: float = 0.01):
    """One anchor (P3, first) 1% too large: its boxes' sizes scale by 1.01."""
    model.detect.anchors[0, 0] *= 1 + rel
    return model


def bn_eps(model, eps: float = 1e-5):
    """Every BatchNorm with eps 1e-5 (PyTorch's default) where YOLOv5 trains with 1e-3."""
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert m.eps == 1e-3
            m.eps = eps
    return model


def grid_offset(model, px: float = 0.05):
    """Detect's cell grid shifted so every box centre moves by ``px`` pixels in x."""
    det = model.detect
    make_grid = det.make_grid

    def shifted(nx, ny, i, dtype, device):
        grid, anchor_grid = make_grid(nx, ny, i, dtype, device)
        return grid + torch.tensor([px / float(det.stride[i]), 0.0], dtype=dtype), anchor_grid

    det.make_grid = shifted
    return model


def classes_swapped(model, a: int = 1, b: int = 3):
    """Class channels ``a`` and ``b`` of every anchor swapped in the Detect convolutions."""
    det = model.detect
    for conv in det.m:
        for k in range(det.na):
            ia, ib = k * det.no + 5 + a, k * det.no + 5 + b
            for p in (conv.weight, conv.bias):
                p.data[[ia, ib]] = p.data[[ib, ia]]
    return model


DEFECTS = {
    "anchor 1% off": (anchor_off, "output0.boxes"),
    "BatchNorm eps 1e-5": (bn_eps, None),
    "grid offset 0.05 px": (grid_offset, "output0.boxes"),
    "two classes swapped": (classes_swapped, "output0.classes"),
}


@pytest.mark.parametrize("defect", list(DEFECTS))
def test_fp32_rule_fails_a_planted_defect(demo, frames, defect):
    plant, field = DEFECTS[defect]
    ref = run(demo, frames)
    report = fp32_report(ref, run(plant(copy.deepcopy(demo)), frames))
    assert report.failures, f"{defect} passed the FP32 rule"  # failed, not merely inconclusive
    if field:
        assert any(f.startswith(field) for f in report.failures), report.failures


def test_rule_is_element_wise_atol_plus_rtol():
    tol = TOLERANCES["fp32"]
    ref = np.zeros((1, 2, 8), np.float32)
    ref[0, :, :4] = [[10, 10, 300, 300], [5, 5, 2, 2]]
    big_box_ok = ref.copy()
    big_box_ok[0, 0, 2] += tol.box_max_abs + 0.9 * tol.box_rtol * 300  # within atol + rtol * 300
    assert fp32_report(ref, big_box_ok).failures == []  # (no scores, no detections: the verdict is inconclusive)
    small_box_bad = ref.copy()
    small_box_bad[0, 1, 0] += tol.box_max_abs * 2  # the same-size error on a 5 px value is out
    assert fp32_report(ref, small_box_bad).failures[0].startswith("output0.boxes")


def test_a_failed_parity_is_recorded_as_failed_in_the_sidecar(small_model, tmp_path, monkeypatch):
    import json

    from clo_export import report as compare
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.export.parity import parity_batches
    from clo_export.models.checkpoint import LoadedModel

    strict = compare.Tolerance(
        box_max_abs=0.0, obj_max_abs=0.0, cls_max_abs=0.0, other_max_abs=0.0, min_f1=1.0, box_rtol=0.0
    )
    monkeypatch.setitem(compare.TOLERANCES, "fp32", strict)  # no export is bit-exact: this parity fails
    loaded = LoadedModel(small_model, tmp_path / "small.pt", "test", "")
    result = export_onnx(
        loaded, tmp_path / "small.onnx", ExportOptions(imgsz=(128, 128)), parity_batches((128, 128), n_random=1)
    )
    assert result.parity is not None and not result.parity
    side = json.loads(result.sidecar.read_text())
    assert side["parity"]["passed"] is False and side["parity"]["failures"]


def test_fp16_rule_judges_boxes_and_classes_only_where_the_reference_scores():
    tol = TOLERANCES["fp16"]
    ref = np.zeros((1, 2, 8), np.float32)
    ref[0, :, :5] = [[100, 100, 40, 40, 0.9], [50, 50, 300, 300, tol.score_floor / 10]]
    ref[0, 0, 5] = 0.9  # row 0 is a detection on both sides, so the comparison is conclusive
    unscored = ref.copy()
    unscored[0, 1, 2] += 10.0  # a row no threshold makes a detection: its box and classes are not judged
    unscored[0, 1, 5] += 0.5
    report = compare_outputs({DETECTION_OUTPUT: ref}, {DETECTION_OUTPUT: unscored}, "fp16")
    assert report, report.failures
    scored = ref.copy()
    scored[0, 0, 2] += 2 * (tol.box_max_abs + tol.box_rtol * 40)  # twice the limit on a scored row's 40 px width
    assert "output0.boxes" in compare_outputs({DETECTION_OUTPUT: ref}, {DETECTION_OUTPUT: scored}, "fp16").failures[0]
    nan = unscored.copy()
    nan[0, 1, 0] = np.nan  # a NaN anywhere still reaches the statistic
    assert not compare_outputs({DETECTION_OUTPUT: ref}, {DETECTION_OUTPUT: nan}, "fp16")
    objectness = ref.copy()
    objectness[0, 1, 4] += 2 * tol.obj_max_abs  # objectness is judged on every row
    assert not compare_outputs({DETECTION_OUTPUT: ref}, {DETECTION_OUTPUT: objectness}, "fp16")


def half_export_outputs(model, x: np.ndarray, tmp: Path) -> np.ndarray:
    """``model`` exported ``--half`` (as clo-export onnx does) and run by ONNX Runtime on ``x``, one frame at a time."""
    import dataclasses

    from clo_export.backends.onnxrt import OnnxRuntimeRunner
    from clo_export.export.exporter import ExportOptions, export_onnx

    loaded = dataclasses.replace(load(BUNDLED_MODEL), model=model)
    path = export_onnx(loaded, tmp / "m.fp16.onnx", ExportOptions(imgsz=(256, 256), half=True, simplifier="none")).path
    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]) as ort:
        out = [ort.infer({"images": x[i : i + 1]})[DETECTION_OUTPUT] for i in range(len(x))]
    return np.concatenate(out).astype(np.float32)


def fp16_report(ref: np.ndarray, test: np.ndarray):
    return Report.accumulate(
        compare_outputs({DETECTION_OUTPUT: r[None]}, {DETECTION_OUTPUT: t[None]}, "fp16") for r, t in zip(ref, test)
    )


FP16_DEFECTS = {
    "BatchNorm eps 1e-5": bn_eps,
    "two classes swapped": classes_swapped,
    "grid offset 2 px": lambda m: grid_offset(m, 2.0),
    "anchor 5% off": lambda m: anchor_off(m, 0.05),
}


@pytest.mark.parametrize("defect", [None, *FP16_DEFECTS])
def test_fp16_rule_passes_a_correct_half_export_and_fails_planted_defects(demo, frames, tmp_path, defect):
    ref = run(demo, frames)
    model = copy.deepcopy(demo) if defect is None else FP16_DEFECTS[defect](copy.deepcopy(demo))
    report = fp16_report(ref, half_export_outputs(model, frames, tmp_path))
    if defect is None:
        assert report, report.failures
        assert report.detections.n_ref > 0
    else:
        assert not report, f"{defect} passed the FP16 rule"


@pytest.mark.parametrize("defect", ["anchor 1%", "grid 0.05 px"])
def test_a_half_export_checks_its_fp32_graph_so_defects_below_fp16_rounding_fail_it(monkeypatch, tmp_path, defect):
    """An exporter bug (planted into the traced graph only; the PyTorch reference stays correct) too small for any
    FP16 limit to see (docs/onnx.md) fails ``--half`` through the FP32 graph's check; a correct export passes both."""
    from clo_export.export import exporter
    from clo_export.export.mode import export_model
    from clo_export.export.parity import parity_batches

    loaded = load(BUNDLED_MODEL)
    inputs = parity_batches((256, 256), limit=8)
    opts = exporter.ExportOptions(imgsz=(256, 256), half=True)
    good = exporter.export_onnx(loaded, tmp_path / "good.fp16.onnx", opts, inputs)
    assert good.graph_parity and good.parity and good.parity is not good.graph_parity
    assert good.graph_parity.precision == "fp32" and good.parity.precision == "fp16"

    plant = {"anchor 1%": anchor_off, "grid 0.05 px": grid_offset}[defect]
    trace = exporter.trace  # the traced copy is made from a planted model; the reference stays correct
    planted = lambda reference, o: trace(export_model(plant(copy.deepcopy(loaded.model)), o.imgsz), o)  # noqa: E731
    monkeypatch.setattr(exporter, "trace", planted)
    bad = exporter.export_onnx(loaded, tmp_path / "bad.fp16.onnx", opts, inputs)
    assert not bad.parity and bad.parity is bad.graph_parity and bad.parity.precision == "fp32"
    assert any(f.startswith("output0.boxes") for f in bad.parity.failures), bad.parity.failures
    side = json.loads((tmp_path / "bad.fp16.onnx.json").read_text())
    assert side["graph_parity"] == side["parity"] and (tmp_path / "bad.fp16.onnx").is_file()  # written, marked failed
