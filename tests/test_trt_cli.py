"""``clo-export trt`` through Typer's CliRunner: flag checks before any work, the install hint without
TensorRT, and the dry run (plan, problems, refusals as one line) for any target version.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import typer
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from clo_export.artifacts import ModelMeta, load_onnx, write_metadata
from clo_export.cli import trt as cli
from clo_export.engine.onnx_facts import default_engine_path, onnx_facts
from clo_export.errors import CloExportError

runner = CliRunner()


def make_app() -> typer.Typer:
    """The trt command alone (main.py registers it in the real app)."""
    app = typer.Typer()
    app.command("trt")(cli.trt)

    @app.callback()
    def main() -> None:
        pass

    return app


def tiny_onnx(path: Path, batch: int | None = 1, qdq: bool = False, fp16: bool = False, nms: bool = False) -> Path:
    """A two-node ONNX with YOLOv5 + clo-export metadata; enough for everything before TensorRT."""
    elem = TensorProto.FLOAT16 if fp16 else TensorProto.FLOAT
    b = batch if batch else "batch"
    x = helper.make_tensor_value_info("images", elem, [b, 3, 64, 64])
    y = helper.make_tensor_value_info("output0", elem, [b, 3, 64, 64])
    inits, nodes = [], [helper.make_node("Relu", ["images"], ["r"]), helper.make_node("Identity", ["r"], ["output0"])]
    if qdq:
        inits = [
            numpy_helper.from_array(np.array(0.1, np.float32), "s"),
            numpy_helper.from_array(np.array(0, np.int8), "z"),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["r"]),
            helper.make_node("Identity", ["r"], ["output0"]),
        ]
    model = helper.make_model(
        helper.make_graph(nodes, "tiny", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    write_metadata(
        model,
        ModelMeta(
            stride=32,
            names={0: "circle", 1: "square", 2: "star"},
            imgsz=(64, 64),
            precision="int8" if qdq else "fp16" if fp16 else "fp32",
            nms=nms,
            dynamic_batch=batch is None,
        ),
    )
    onnx.save(model, str(path))
    return path


def run(*args: str):
    result = runner.invoke(make_app(), ["trt", *map(str, args)])
    text = "".join(" " if "\u2500" <= ch <= "\u257f" else ch for ch in result.output)  # drop table borders
    return result, " ".join(text.split())


# ---- flags, before any work ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected", [("1,4,8", (1, 4, 8)), ("4", (4, 4, 4)), (" 2, 2 ,3", (2, 2, 3)), (None, None)]
)
def test_parse_batch_range(text, expected):
    assert cli.parse_batch_range(text) == expected


@pytest.mark.parametrize("text", ["1,4", "a,b,c", "1,2,3,4", "-1"])
def test_parse_batch_range_refusals(text):
    with pytest.raises(CloExportError, match="--batch-range"):
        cli.parse_batch_range(text)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--fp16", "--int8"], "choose one of --fp16 or --int8"),
        (["--calib", "imgs"], "--calib is for --int8 builds"),
        (["--calibrator", "entropy"], "--calibrator entropy only applies to --int8"),
        (["--int8", "--num", "0"], "--num 0 must be at least 1"),
        (["--workspace", "0"], "--workspace 0.0 must be a positive"),
        (["--fp16", "--dla-core", "-1"], "--dla-core -1 must be 0 or 1"),
        (["--no-gpu-fallback"], "only apply with --dla-core N"),
        (["--batch-range", "8,4,1"], "MIN <= OPT <= MAX"),
        (["--batch", "0,1,2"], "--batch-range 0,1,2 must satisfy 1 <= MIN"),
        (["--target", "10.x"], "--target is for --dry-run"),
    ],
)
def test_flag_refusals(args, message, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # refused before TensorRT is needed
    result, out = run(tiny_onnx(tmp_path / "m.onnx"), *args)
    assert result.exit_code == 1 and out.startswith("error: ") and message in out, out


def test_flag_refusals_about_files(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    for args, message in [
        ([tmp_path / "none.onnx"], "does not exist; export one with: clo-export onnx"),
        ([tmp_path / "best.pt"], "is not an ONNX file"),
        ([tiny_onnx(tmp_path / "m.onnx"), "--timing-cache", tmp_path], "is a folder"),
        ([tmp_path / "m.onnx", "--int8", "--keep-float", tmp_path / "none.json"], "--keep-float"),
    ]:
        (tmp_path / "best.pt").write_bytes(b"x")
        result, out = run(*args)
        assert result.exit_code == 1 and message in out, out


def test_flags_are_checked_before_tensorrt_is_imported(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # importing it would fail with the install hint
    result, out = run(tiny_onnx(tmp_path / "m.onnx"), "--fp16", "--int8")
    assert result.exit_code == 1 and "choose one of --fp16 or --int8" in out and "pip install" not in out


def test_missing_tensorrt_is_one_line_with_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    result, out = run(tiny_onnx(tmp_path / "m.onnx"), "--fp16")
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "tensorrt is needed" in out and "pip install tensorrt" in out and "JetPack" in out
    assert result.output.count("error:") == 1


def test_default_engine_paths():
    assert default_engine_path(Path("w/best.onnx"), "fp32") == Path("w/best.engine")
    assert default_engine_path(Path("w/best.onnx"), "fp16") == Path("w/best.fp16.engine")
    assert default_engine_path(Path("w/best.fp16.onnx"), "fp16") == Path("w/best.fp16.engine")
    assert default_engine_path(Path("w/best.int8.onnx"), "int8") == Path("w/best.int8.engine")


def facts(path: Path):
    return onnx_facts(load_onnx(path))


def test_onnx_facts(tmp_path):
    f = facts(tiny_onnx(tmp_path / "a.onnx"))
    assert (f.input_name, f.input_shape, f.is_qdq, f.is_fp16, f.dynamic_batch, f.imgsz) == (
        "images",
        (1, 3, 64, 64),
        False,
        False,
        False,
        (64, 64),
    )
    assert facts(tiny_onnx(tmp_path / "b.onnx", qdq=True)).is_qdq
    assert facts(tiny_onnx(tmp_path / "c.onnx", fp16=True)).is_fp16
    d = facts(tiny_onnx(tmp_path / "d.onnx", batch=None))
    assert d.dynamic_batch and d.input_shape == (-1, 3, 64, 64)
    (tmp_path / "e.onnx").write_bytes(b"not onnx")
    with pytest.raises(CloExportError, match="not a readable ONNX model"):
        load_onnx(tmp_path / "e.onnx")


# ---- plan refusals surface as one line --------------------------------------------------------------


@pytest.mark.parametrize(
    "version, args, message",
    [
        (
            "11.4.0",
            ["--int8", "--calibrator", "entropy", "--calib", "imgs/"],
            "implicit INT8 calibrators were removed in TensorRT 11",
        ),
        ("10.12.0", ["--fp16", "--dla", "0"], "DLA unsupported in this TensorRT (10.12.0)"),
        ("8.6.1", ["--fp16", "--strongly-typed"], "--strongly-typed needs TensorRT 10 or newer"),
        ("10.3.0", ["--fp16", "--batch-range", "1,4,8"], "--batch-range needs a dynamic-batch ONNX"),
        ("10.3.0", ["--int8"], "--int8 needs a Q/DQ ONNX: run clo-export quantize"),
        ("8.5.2", ["--int8", "--dla", "0", "--calib", "imgs/"], "DLA on JetPack 5 (TensorRT 8.5.2) does not take Q/DQ"),
    ],
)
def test_plan_refusals(version, args, message, tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    result, out = run(model, *args, "--dry-run", "--target", version)
    assert result.exit_code == 1, result.output
    assert message in out and "Traceback" not in result.output and result.output.count("error:") == 1
    assert not list(tmp_path.glob("*.engine*"))


def test_qdq_onnx_must_be_built_int8(tmp_path):
    result, out = run(tiny_onnx(tmp_path / "m.int8.onnx", qdq=True), "--fp16", "--dry-run", "--target", "10.3")
    assert result.exit_code == 1 and "this ONNX holds Q/DQ (INT8) nodes; build it with --int8" in out


# ---- the dry run ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "target, words",
    [
        (
            "8.5",
            [
                "TensorRT 8.5.2",
                "fp16 (builder flags FP16)",
                "EXPLICIT_BATCH",
                "OBEY_PRECISION_CONSTRAINTS",
                "Softmax layers pinned to FP32",
                "pre-flight check for TensorRT 8.5.2: passed",
            ],
        ),
        (
            "11.x",
            [
                "TensorRT 11.4.1",
                "fp16 (strongly typed)",
                "FP16 ONNX (made from the given one)",
                "pre-flight check for TensorRT 11.4.1: passed",
            ],
        ),
    ],
)
def test_dry_run_prints_the_plan_and_passes(target, words, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # no TensorRT needed
    result, out = run(tiny_onnx(tmp_path / "m.onnx"), "--fp16", "--dry-run", "--target", target)
    assert result.exit_code == 0, out
    for w in words:
        assert w in out, w
    assert not list(tmp_path.glob("*.engine*")) and not list(tmp_path.glob("*.fp16.onnx"))


def test_dry_run_prints_one_line_per_problem_and_fails(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    proto = onnx.load(str(model))
    proto.opset_import[0].version = 18
    proto.graph.node[1].op_type = "Unique"
    onnx.save(proto, str(model))
    result, _ = run(model, "--dry-run", "--target", "8.6")
    problems = [line for line in result.output.splitlines() if line.startswith("problem: ")]
    assert result.exit_code == 1 and len(problems) == 2, result.output
    assert problems[0].startswith("problem: opset: model: opset 18 is above 17")
    assert "unsupported-op" in problems[1] and "2 problems" in result.output


def test_dry_run_with_keep_float_and_dla(tmp_path):
    keep = tmp_path / "m.int8.json"
    keep.write_text(json.dumps({"float_nodes": ["relu"]}))
    result, out = run(
        tiny_onnx(tmp_path / "m.onnx"),
        "--int8",
        "--calibrator",
        "entropy",
        "--calib",
        "imgs/",
        "--keep-float",
        keep,
        "--dla",
        "0",
        "--dry-run",
        "--target",
        "8.5",
    )
    assert result.exit_code == 0, out
    assert "layer precisions 1 layers FLOAT" in out and "DLA core 0, GPU fallback" in out
    assert "calibrator IInt8EntropyCalibrator2" in out and "1 layers kept in FP32" in out


def test_keep_float_file_must_exist(tmp_path):
    result, out = run(tiny_onnx(tmp_path / "m.onnx"), "--int8", "--keep-float", tmp_path / "none.json")
    assert result.exit_code == 1 and "--keep-float" in out and "does not exist" in out


def test_target_needs_dry_run(tmp_path):
    result, out = run(tiny_onnx(tmp_path / "m.onnx"), "--target", "8.5")
    assert result.exit_code == 1 and "--target is for --dry-run" in out


def test_output_must_not_overwrite_the_onnx(tmp_path, monkeypatch):
    import types

    fake = types.ModuleType("tensorrt")
    fake.__version__ = "10.3.0"
    monkeypatch.setitem(sys.modules, "tensorrt", fake)  # the check comes before anything TensorRT does
    model = tiny_onnx(tmp_path / "m.onnx")
    result, out = run(model, "-o", model)
    assert result.exit_code == 1 and "would overwrite the ONNX" in out
