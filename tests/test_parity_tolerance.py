"""The FP32 parity rule fails each planted export defect, and passes a correct export, on real frames.

The rule's limits come from bench/parity_tolerance.py (1,000 real frames per model and size, zero
false failures). Here the bundled demo model runs on frames of the demo video; each defect is
planted in a copy of the model, as a broken export would carry it, and the copy's output is
compared with the correct model's under the FP32 rule.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from clo_export.compare import DETECTION_OUTPUT, TOLERANCES, compare_outputs
from clo_export.data.preprocess import preprocess_batch
from clo_export.demo.run import BUNDLED_MODEL
from clo_export.demo.shapes import make_video_frames
from clo_export.models.checkpoint import load

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


DEFECTS = {"anchor 1% off": (anchor_off, "output0.boxes"), "BatchNorm eps 1e-5": (bn_eps, None),
           "grid offset 0.05 px": (grid_offset, "output0.boxes"), "two classes swapped": (classes_swapped, "output0.classes")}


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

    from clo_export import compare
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.export.parity import parity_batches
    from clo_export.models.checkpoint import LoadedModel

    strict = compare.Tolerance(box_max_abs=0.0, obj_max_abs=0.0, cls_max_abs=0.0, other_max_abs=0.0, min_f1=1.0, box_rtol=0.0)
    monkeypatch.setitem(compare.TOLERANCES, "fp32", strict)  # no export is bit-exact: this parity fails
    loaded = LoadedModel(small_model, tmp_path / "small.pt", "test", "")
    result = export_onnx(loaded, tmp_path / "small.onnx", ExportOptions(imgsz=(128, 128)), parity_batches((128, 128), n_random=1))
    assert result.parity is not None and not result.parity
    side = json.loads(result.sidecar.read_text())
    assert side["parity"]["passed"] is False and side["parity"]["failures"]
