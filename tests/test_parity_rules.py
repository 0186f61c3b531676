"""Parity is never passed on nothing: NaN fails each check in one line, no boxes is inconclusive, samples have boxes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clo_export.cli.infer import app as infer_app
from clo_export.cli.main import app
from clo_export.models.checkpoint import load, save_yolov5
from tests.helpers import IMGSZ

cli = CliRunner()


def invoke(application, *args):
    return cli.invoke(application, [str(a) for a in args])


def error_line(output: str) -> str:
    """The one error line a failed command prints (and no traceback)."""
    assert "Traceback" not in output
    lines = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1, output
    return lines[0]


def altered(art, path, change):
    """The fixture checkpoint with ``change(model)`` applied, saved as a YOLOv5 checkpoint at ``path``."""
    model = copy.deepcopy(load(art.pt).model)
    with torch.no_grad():
        change(model)
    return save_yolov5(model, path, opt={"imgsz": IMGSZ})


def nan_first_conv(model) -> None:
    next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d)).weight.fill_(float("nan"))


def no_objects(model) -> None:
    for conv in model.detect.m:
        conv.bias.view(model.detect.na, -1)[:, 4] = -30.0  # objectness ~1e-13: nothing is ever detected


@pytest.fixture(scope="module")
def nan_pt(art, tmp_path_factory):
    return altered(art, tmp_path_factory.mktemp("nan") / "nan.pt", nan_first_conv)


def test_nan_checkpoint_with_nms_fails_onnx_check_and_live_check(art, nan_pt, tmp_path):
    out = tmp_path / "nan_nms.onnx"
    res = invoke(app, "onnx", nan_pt, "--nms", "--imgsz", IMGSZ, "-o", out)
    assert res.exit_code == 1 and out.is_file()  # written, to inspect it
    assert error_line(res.output).startswith("error: parity failed: reference output 'output0' has ")
    res = invoke(app, "check", out, "-w", nan_pt, "-s", art.images)
    assert res.exit_code == 1
    assert error_line(res.output).startswith("error: check failed: reference output 'output0' has ")
    res = invoke(infer_app, art.video, "-m", out, "--check", nan_pt, "--check-every", "12", "-q")
    assert res.exit_code == 1
    line = error_line(res.output)
    assert line.startswith("error: live check on 2 frame(s) failed: reference output 'output0' has ")
    assert "test output 'output0' has " in line  # the raw head (the graph cut before NMS) is NaN too


def test_a_model_whose_outputs_are_all_nan_fails_check_naming_the_side(art, nan_pt, tmp_path):
    out = tmp_path / "nan.onnx"
    assert invoke(app, "onnx", nan_pt, "--imgsz", IMGSZ, "--no-check", "-o", out).exit_code == 0
    res = invoke(app, "check", out, "-w", art.pt, "-s", art.images)
    assert res.exit_code == 1
    n = 3 * 3 * sum((IMGSZ // s) ** 2 for s in (8, 16, 32)) * (5 + 3)  # 3 images x 3 anchors per cell x (5 + nc)
    line = error_line(res.output)
    assert line.startswith(f"error: check failed: test output 'output0' has {n} NaN values; detections: F1 0.0000")


def test_a_model_that_detects_nothing_is_inconclusive_not_passed(art, tmp_path):
    blind = altered(art, tmp_path / "blind.pt", no_objects)
    res = invoke(app, "onnx", blind, "--imgsz", IMGSZ, "-o", tmp_path / "blind.onnx", "--source", art.images)
    assert res.exit_code == 1 and "0 ref boxes" in res.output
    line = error_line(res.output)
    assert line.startswith("error: parity inconclusive: the reference found no detections on any of 5 input(s)")
    res = invoke(app, "check", tmp_path / "blind.onnx", "-w", blind, "-s", art.images, "--json", tmp_path / "r.json")
    assert res.exit_code == 1 and error_line(res.output).startswith("error: check inconclusive: the reference found no")
    import json

    assert json.loads((tmp_path / "r.json").read_text())["report"]["verdict"] == "inconclusive"


def test_bundled_sample_frames_are_small_and_the_bundled_model_finds_boxes_on_each():
    from clo_export.backends.pytorch import TorchRunner
    from clo_export.demo.run import BUNDLED_MODEL
    from clo_export.export.parity import SAMPLE_FRAMES, parity_batches
    from clo_export.postprocess import detections

    files = sorted(SAMPLE_FRAMES.glob("*.jpg"))
    assert 4 <= len(files) <= 8 and sum(f.stat().st_size for f in files) < 200_000
    batches = parity_batches((256, 256), n_random=1)  # 1 noise batch, then the samples
    assert len(batches) == 1 + len(files)
    with TorchRunner(load(BUNDLED_MODEL).model) as model:
        counts = [len(detections(model.infer({"images": x}))[0]) for x in batches[1:]]
    assert min(counts) >= 2, counts
    batched = parity_batches((64, 64), (4,), n_random=0)  # frames fill the export's batch, the last one wrapped
    assert [b.shape[0] for b in batched] == [4, 4] and np.array_equal(batched[1][2:], batched[0][:2])
