"""The INT8 accuracy gate and small calibration sets, through every door: ``clo_export.quantize()``,
``clo-export quantize`` and ``clo-export trt --int8 --calib`` (up to the TensorRT call, tests/fake_tensorrt.py)
give the same refusals and the same gate outcome on the same inputs."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clo_export import build_engine  # the public call, as a library user makes it
from clo_export.cli.main import app
from clo_export.engine.plan import BuildRequest
from clo_export.errors import CloExportError
from clo_export.quantization.quantize import AgreementError, QuantizeOptions, quantize
from tests.helpers import artifacts, small_onnx, write_images

runner = CliRunner()
FAST = {"method": "minmax", "target_drop": None}  # the gate judges the written model, however its ranges were chosen
FAST_ARGS = ["--method", "minmax", "--all-int8"]


def workdir(root: Path, n: int, model: Path | None = None) -> Path:
    """``root`` with ``m.onnx`` (the small 256x256 model unless ``model``) and ``n`` calibration images."""
    root.mkdir(parents=True)
    shutil.copy(model or small_onnx(), root / "m.onnx")
    write_images(root / "calib", n)
    return root


def one_line(text: str) -> str:
    return " ".join(text.split())


def cli(*args: str):
    """``clo-export ARGS`` through the real app; (result, its output on one line)."""
    result = runner.invoke(app, list(args))
    return result, one_line(result.output)


def outputs(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name not in ("m.onnx", "calib"))


@pytest.mark.parametrize("n", [1, 3, 17])
def test_a_small_set_quantizes_on_all_images_and_says_accuracy_was_not_measured(n, tmp_path, caplog):
    """Below 32 images (16 to calibrate, 16 held out) the defaults calibrate on all: one warning, no numbers."""
    root = workdir(tmp_path / "w", n)
    with caplog.at_level(logging.WARNING, logger="clo_export"):
        result = quantize(root / "m.onnx", root / "calib")  # every default: auto method, float fallback, the gate
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "calibrating on all with none held out" in warnings[0], warnings
    assert "not measured" in warnings[0] and "no automatic float fallback" in warnings[0]
    assert len(result.split.calib) == n and result.split.holdout == []
    assert result.method == "mse" and result.method_scores == {} and result.choice is None and result.sites is None
    report = json.loads(result.accuracy_path.read_text())
    reason = f"{n} readable image{'s' * (n != 1)}: the held-out report needs 16 held out besides 16 to calibrate (32+)"
    assert report["not_measured"] == reason and report["n_images"] == 0
    for key in ("agreement_map50_95", "int8_vs_fp32", "fp32_vs_itself", "drop_map50_95_points", "box_iou"):
        assert report[key] is None, key  # never a made-up number
    assert report["gate"] == {"min_agreement": 0.95, "outcome": "not measured"} and report["fallback"] is None
    side = json.loads(result.sidecar.read_text())["accuracy"]
    assert side["agreement_map50_95"] is None and side["not_measured"] == reason
    assert side["gate"]["outcome"] == "not measured"
    assert json.loads(result.sidecar.read_text())["calibration"]["images"] == n


def test_64_images_are_measured_on_16_held_out(tmp_path, caplog):
    """A fifth of 64 is 12, fewer than the report needs: 16 are held out and 48 calibrate (this refused before)."""
    root = workdir(tmp_path / "w", 64)
    with caplog.at_level(logging.WARNING, logger="clo_export"):
        result = quantize(root / "m.onnx", root / "calib", None, QuantizeOptions(min_agreement=0, **FAST))
    assert (len(result.split.calib), len(result.split.holdout)) == (48, 16)
    assert "not measured" not in caplog.text and "only 48 calibration images (200+ recommended)" in caplog.text
    report = json.loads(result.accuracy_path.read_text())
    assert report["not_measured"] is None and report["n_images"] == 16
    assert report["agreement_map50_95"] == pytest.approx(result.report.score) and 0 < result.report.score <= 1.2
    assert report["gate"] == {"min_agreement": 0, "outcome": "passed"}


def test_the_cli_prints_not_measured_and_writes_the_model(tmp_path):
    root = workdir(tmp_path / "w", 3)
    result, out = cli("quantize", str(root / "m.onnx"), "--calib", str(root / "calib"))
    assert result.exit_code == 0, result.output
    assert "3 calibration + 0 held-out images of 3 found" in out and "float fallback off (no held-out images)" in out
    assert "INT8 vs FP32: not measured" in out and "INT8 accuracy not measured (3 readable images:" in out
    assert "--min-agreement not checked" in out
    assert outputs(root) == ["m.int8.accuracy.json", "m.int8.calib.json", "m.int8.onnx", "m.int8.onnx.json"]


REFUSALS = [  # (images, CLI args, QuantizeOptions fields, the one line both give)
    (32, ["--holdout", "5"], {"holdout": 5}, "--holdout 5 must be 0 (no accuracy report) or at least 16"),
    (32, ["--conf", "1.5"], {"conf": 1.5}, "--conf 1.5 must lie in [0, 1]"),
    (32, ["--min-agreement", "1.5"], {"min_agreement": 1.5}, "--min-agreement 1.5 must lie in [0, 1]"),
    (32, ["--seed", "-1"], {"seed": -1}, "--seed -1 must be at least 0"),
    (32, ["--num", "4"], {"num": 4}, "--num 4 is too small"),
    (
        32,
        ["--holdout", "0", "--min-agreement", "0.5"],
        {"holdout": 0, "min_agreement": 0.5},
        "--min-agreement 0.5 cannot be checked: --holdout 0 holds no images out; hold images out, or leave "
        "--min-agreement out to write the model with its accuracy marked not measured",
    ),
    (
        3,
        ["--min-agreement", "0.9"],
        {"min_agreement": 0.9},
        "--min-agreement 0.9 cannot be checked: 3 readable images: the held-out report needs 16 held out besides 16 "
        "to calibrate (32+); add images to --calib, or leave --min-agreement out",
    ),
    (3, ["--sensitivity"], {"sensitivity": True}, "--sensitivity needs held-out images: 3 readable images"),
]


@pytest.mark.parametrize("n, args, fields, message", REFUSALS, ids=[" ".join(r[1]) for r in REFUSALS])
def test_library_and_cli_refuse_the_same_way_before_any_work(n, args, fields, message, tmp_path):
    lib, shell = workdir(tmp_path / "lib", n), workdir(tmp_path / "cli", n)
    with pytest.raises(CloExportError) as e:
        quantize(lib / "m.onnx", lib / "calib", None, QuantizeOptions(**fields))
    assert message in str(e.value) and "\n" not in str(e.value)
    result, out = cli("quantize", str(shell / "m.onnx"), "--calib", str(shell / "calib"), *args)
    assert result.exit_code == 1 and one_line(str(e.value)) in out and "Traceback" not in out
    assert outputs(lib) == outputs(shell) == []  # refused before anything was written


def test_quantize_conf_follows_the_inference_rule():
    """--conf 0 and 1 are accepted as clo-infer accepts them; outside [0, 1] both refuse in the same words."""
    from clo_export.pipeline import InferOptions

    QuantizeOptions(conf=0.0, iou=1.0).validate()
    QuantizeOptions(conf=1.0).validate()
    with pytest.raises(CloExportError) as infer:
        InferOptions(conf=-0.1).validate()
    with pytest.raises(CloExportError) as quant:
        QuantizeOptions(conf=-0.1).validate()
    assert str(infer.value) == str(quant.value) == "--conf -0.1 must lie in [0, 1]"


def test_a_failed_gate_is_the_same_refusal_from_the_library_and_the_cli(tmp_path):
    """32 images: 16 calibrate, 16 held out; the untrained model's INT8 keeps well under 1.0 of FP32's mAP."""
    lib, shell = workdir(tmp_path / "lib", 32), workdir(tmp_path / "cli", 32)
    with pytest.raises(AgreementError) as e:
        quantize(lib / "m.onnx", lib / "calib", None, QuantizeOptions(min_agreement=1.0, **FAST))
    text, score = str(e.value), e.value.result.report.score
    assert text.startswith(f"INT8 keeps {score:.4f} of FP32's mAP@.5:.95") and "below --min-agreement 1;" in text
    assert "m.int8.onnx and its report are written, marked failed" in text
    result, out = cli(
        "quantize", str(shell / "m.onnx"), "--calib", str(shell / "calib"), *FAST_ARGS, "--min-agreement", "1"
    )
    assert result.exit_code == 1 and out.endswith(one_line(text)), result.output
    assert "mAP@.5:.95 vs FP32 dets" in out  # what was measured is shown before the refusal
    for root in (lib, shell):
        side = json.loads((root / "m.int8.onnx.json").read_text())["accuracy"]
        assert side["gate"] == {"min_agreement": 1.0, "outcome": "failed"}
        assert side["agreement_map50_95"] == pytest.approx(score)  # the same inputs gave the same number
    at_score = quantize(lib / "m.onnx", lib / "calib", None, QuantizeOptions(min_agreement=score, **FAST))
    assert at_score.report.info["gate"]["outcome"] == "passed"  # the floor itself passes


def test_trt_refuses_an_unmeasurable_gate_as_quantize_does(fake_trt, tmp_path):
    fake_trt("10.3.0")
    lib, lib_trt, shell = (workdir(tmp_path / d, 3, artifacts().onnx) for d in ("lib", "trt", "cli"))
    with pytest.raises(CloExportError) as want:
        quantize(lib / "m.onnx", lib / "calib", None, QuantizeOptions(min_agreement=0.9))
    with pytest.raises(CloExportError) as got:
        build_engine(
            lib_trt / "m.onnx", BuildRequest(precision="int8"), calib=(str(lib_trt / "calib"),), min_agreement=0.9
        )
    assert str(got.value) == str(want.value) and "cannot be checked" in str(got.value)
    result, out = cli("trt", str(shell / "m.onnx"), "--int8", "--calib", str(shell / "calib"), "--min-agreement", "0.9")
    assert result.exit_code == 1 and one_line(str(want.value)) in out
    assert outputs(lib) == outputs(lib_trt) == outputs(shell) == []  # no Q/DQ model, no engine


def test_trt_min_agreement_needs_a_quantize_step(fake_trt, tmp_path):
    fake_trt("10.3.0")
    root = workdir(tmp_path / "w", 0, artifacts().onnx)
    result, out = cli("trt", str(root / "m.onnx"), "--fp16", "--min-agreement", "0.9")
    assert result.exit_code == 1 and "--min-agreement checks the INT8 model quantized from --calib images" in out
    assert outputs(root) == []


@pytest.mark.slow
def test_trt_int8_calib_refuses_a_failed_gate_with_quantizes_words(fake_trt, tmp_path):
    """trt quantizes with quantize's defaults (auto method, float fallback): a failed gate stops it before TensorRT."""
    fake_trt("10.3.0")
    lib, shell = (workdir(tmp_path / d, 32, artifacts().onnx) for d in ("lib", "trt"))
    with pytest.raises(AgreementError) as want:
        quantize(lib / "m.onnx", lib / "calib", None, QuantizeOptions(num=16, min_agreement=1.0))
    result, out = cli(
        "trt", str(shell / "m.onnx"), "--int8", "--calib", str(shell / "calib"), "--num", "16", "--min-agreement", "1"
    )
    assert result.exit_code == 1 and out.endswith(one_line(str(want.value))), result.output
    assert not list(shell.glob("*.engine*"))  # nothing built
    side = json.loads((shell / "m.int8.onnx.json").read_text())["accuracy"]
    assert side["gate"]["outcome"] == "failed"
    assert side["agreement_map50_95"] == pytest.approx(want.value.result.report.score)
