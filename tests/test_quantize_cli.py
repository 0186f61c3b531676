"""``clo-export quantize`` through Typer's CliRunner: output, report table, --min-agreement, one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from clo_export.cli.quantize import quantize
from tests.helpers import make_app, small_onnx

runner = CliRunner()


def test_quantize_prints_the_report_and_writes_files(tmp_path):
    src = small_onnx()
    shutil.copy(src, tmp_path / "m.onnx")
    args = [
        "quantize",
        str(tmp_path / "m.onnx"),
        "--calib",
        str(src.parent / "calib"),
        "--num",
        "16",
        "--holdout",
        "16",
        "--method",
        "minmax",
        "--all-int8",
        "--min-agreement",
        "0.3",
    ]
    result = runner.invoke(make_app(), args)
    assert result.exit_code == 0, result.output
    out = " ".join(result.output.split())
    assert "quantized" in out and "16 calibration + 16 held-out images" in out and "TensorRT Q/DQ rules: ok" in out
    assert "mAP@.5:.95 vs FP32 dets" in out and "box IoU of matched pairs" in out and "detections @conf 0.25" in out
    assert "float fallback off (--all-int8)" in out and "float_nodes for clo-export trt --keep-float" in out
    assert (tmp_path / "m.int8.onnx").is_file() and (tmp_path / "m.int8.onnx.json").is_file()
    assert json.loads((tmp_path / "m.int8.accuracy.json").read_text())["n_images"] == 16
    again = runner.invoke(make_app(), args[:-2] + ["--min-agreement", "1.0"])
    assert again.exit_code == 1 and "ranges from cache" in again.output and "below --min-agreement" in again.output


def test_errors_are_one_line_and_exit_1(tmp_path):
    src = small_onnx()
    bad = runner.invoke(make_app(), ["quantize", str(src), "--calib", str(tmp_path / "nowhere")])
    assert bad.exit_code == 1 and "does not exist" in bad.output and "Traceback" not in bad.output
    small = runner.invoke(make_app(), ["quantize", str(src), "--calib", str(src.parent / "calib"), "--num", "4"])
    assert small.exit_code == 1 and "--num 4 is too small" in small.output


def test_holdout_default_is_the_library_default():
    import inspect

    from clo_export.quantization.calibset import DEFAULT_HOLDOUT

    assert inspect.signature(quantize).parameters["holdout"].default == DEFAULT_HOLDOUT


def test_an_in_graph_nms_model_is_reported_on_its_own_outputs(tmp_path):
    """The held-out report finds in-graph NMS from the outputs: per-output errors of boxes/scores, no output0 fields."""
    from clo_export.quantization.quantize import QuantizeOptions
    from clo_export.quantization.quantize import quantize as quantize_model
    from tests.helpers import artifacts, make_video

    art = artifacts()
    make_video(tmp_path / "calib.mp4", frames=48)
    result = quantize_model(
        art.nms_onnx,
        tmp_path / "calib.mp4",
        tmp_path / "m_nms.int8.onnx",
        QuantizeOptions(num=16, holdout=16, method="minmax", target_drop=None, min_agreement=0),
    )
    report = result.report
    assert sorted(report.tensors) == ["boxes", "scores"]
    assert report.agreement.n_ref > 0 and report.agreement.f1 > 0.5 and 0 < report.int8.map50_95 <= 1
    assert 0 <= report.int8.box_error < 100


def test_box_error_of_an_in_graph_nms_model_counts_a_lost_box_as_iou_0(tmp_path):
    """In-graph NMS: no anchors to pair, so the deployment detections are matched; a missing FP32 box counts 1 - 0."""
    from clo_export.quantization.accuracy import HeldOut
    from clo_export.quantization.calibset import CalibrationData, split_sources
    from tests.helpers import IMGSZ, artifacts, make_video

    art = artifacts()
    make_video(tmp_path / "calib.mp4", frames=24)
    held = HeldOut(
        str(art.nms_onnx), CalibrationData(split_sources(tmp_path / "calib.mp4", 16, 8, 0).holdout, (IMGSZ, IMGSZ))
    )
    assert held.in_graph_nms and held.box_error(held.ref) == 0.0
    n_ref = sum(len(d) for d in held.ref_dets)
    first = next(i for i, d in enumerate(held.ref_dets) if len(d))
    lost = [{k: v.copy() for k, v in out.items()} for out in held.ref]
    lost[first]["num_dets"][0] -= 1  # the last (lowest-score) box of that image is gone
    assert n_ref > 3 and held.box_error(lost) == pytest.approx(100 / n_ref)
