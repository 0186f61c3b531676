"""``clo-export trt`` through Typer's CliRunner with a fake ``tensorrt``: flag checks before any work,
the install hint, plan refusals as one line, and a full (fake) build writing engine + sidecar + table.
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

from clo_export.cli import trt as cli
from clo_export.engine.sidecar import EngineSidecar
from clo_export.errors import CloExportError
from clo_export.export.metadata import ModelMeta, write_metadata
from tests.test_trt_api import FakeTrt

runner = CliRunner()
GPU = ("NVIDIA H100 80GB HBM3", (9, 0))


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
        inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"), numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["images", "s", "z"], ["q"]),
                 helper.make_node("DequantizeLinear", ["q", "s", "z"], ["r"]),
                 helper.make_node("Identity", ["r"], ["output0"])]
    model = helper.make_model(helper.make_graph(nodes, "tiny", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)])
    write_metadata(model, ModelMeta(stride=32, names={0: "circle", 1: "square", 2: "star"}, imgsz=(64, 64),
                                    precision="int8" if qdq else "fp16" if fp16 else "fp32", nms=nms,
                                    dynamic_batch=batch is None))
    onnx.save(model, str(path))
    return path


@pytest.fixture()
def fake_trt(monkeypatch):
    """Install a fake tensorrt of a given version and a known GPU; returns the installer."""
    monkeypatch.setattr("clo_export.backends.cuda_memory.gpu_identity", lambda device=0, prefer=None: GPU)

    def install(version: str) -> FakeTrt:
        fake = FakeTrt(version)
        monkeypatch.setitem(sys.modules, "tensorrt", fake)
        return fake

    return install


def run(*args: str):
    result = runner.invoke(make_app(), ["trt", *map(str, args)])
    text = "".join(" " if "\u2500" <= ch <= "\u257f" else ch for ch in result.output)  # drop table borders
    return result, " ".join(text.split())


# ---- flags, before any work ----------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [("1,4,8", (1, 4, 8)), ("4", (4, 4, 4)), (" 2, 2 ,3", (2, 2, 3)), (None, None)])
def test_parse_batch_range(text, expected):
    assert cli.parse_batch_range(text) == expected


@pytest.mark.parametrize("text", ["1,4", "a,b,c", "0,1,2", "4,2,8", "1,2,3,4", "-1"])
def test_parse_batch_range_refusals(text):
    with pytest.raises(CloExportError, match="--batch-range"):
        cli.parse_batch_range(text)


@pytest.mark.parametrize("kw, message", [
    (dict(fp16=True, int8=True), "choose one of --fp16 or --int8"),
    (dict(calib=["imgs"]), "--calib is for --int8 builds"),
    (dict(calibrator="entropy"), "--calibrator entropy only applies to --int8"),
    (dict(int8=True, num=0), "--num 0 must be at least 1"),
    (dict(workspace=0), "--workspace 0 must be a positive"),
    (dict(fp16=True, dla=-1), "--dla -1 must be 0 or 1"),
    (dict(gpu_fallback=False), "only apply with --dla N"),
    (dict(batch_range="8,4,1"), "MIN <= OPT <= MAX"),
])
def test_flag_refusals(kw, message, tmp_path):
    with pytest.raises(CloExportError, match=message):
        cli.validate_flags(tiny_onnx(tmp_path / "m.onnx"), **kw)


def test_flag_refusals_about_files(tmp_path):
    with pytest.raises(CloExportError, match="does not exist; export one with: clo-export onnx"):
        cli.validate_flags(tmp_path / "none.onnx")
    (tmp_path / "best.pt").write_bytes(b"x")
    with pytest.raises(CloExportError, match="is not an ONNX file"):
        cli.validate_flags(tmp_path / "best.pt")
    with pytest.raises(CloExportError, match="is a folder"):
        cli.validate_flags(tiny_onnx(tmp_path / "m.onnx"), timing_cache=tmp_path)
    f = cli.validate_flags(tmp_path / "m.onnx", int8=True, calib=["a", "b"], dla=0, batch_range="2")
    assert (f.precision, f.calib, f.dla_core, f.gpu_fallback, f.batch_range) == ("int8", ("a", "b"), 0, True, (2, 2, 2))


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
    assert cli.default_engine_path(Path("w/best.onnx"), "fp32") == Path("w/best.engine")
    assert cli.default_engine_path(Path("w/best.onnx"), "fp16") == Path("w/best.fp16.engine")
    assert cli.default_engine_path(Path("w/best.fp16.onnx"), "fp16") == Path("w/best.fp16.engine")
    assert cli.default_engine_path(Path("w/best.int8.onnx"), "int8") == Path("w/best.int8.engine")


def test_read_onnx_facts(tmp_path):
    f = cli.read_onnx_facts(tiny_onnx(tmp_path / "a.onnx"))
    assert (f.input_name, f.input_shape, f.is_qdq, f.is_fp16, f.dynamic_batch, f.imgsz) == (
        "images", (1, 3, 64, 64), False, False, False, (64, 64))
    assert cli.read_onnx_facts(tiny_onnx(tmp_path / "b.onnx", qdq=True)).is_qdq
    assert cli.read_onnx_facts(tiny_onnx(tmp_path / "c.onnx", fp16=True)).is_fp16
    d = cli.read_onnx_facts(tiny_onnx(tmp_path / "d.onnx", batch=None))
    assert d.dynamic_batch and d.input_shape == (-1, 3, 64, 64)
    (tmp_path / "e.onnx").write_bytes(b"not onnx")
    with pytest.raises(CloExportError, match="cannot read ONNX"):
        cli.read_onnx_facts(tmp_path / "e.onnx")


# ---- plan refusals surface as one line --------------------------------------------------------------

@pytest.mark.parametrize("version, args, message", [
    ("11.4.0", ["--int8", "--calibrator", "entropy", "--calib", "imgs/"], "implicit INT8 calibrators were removed in TensorRT 11"),
    ("10.12.0", ["--fp16", "--dla", "0"], "DLA unsupported in this TensorRT (10.12.0)"),
    ("8.6.1", ["--fp16", "--strongly-typed"], "--strongly-typed needs TensorRT 10 or newer"),
    ("10.3.0", ["--fp16", "--batch-range", "1,4,8"], "--batch needs a dynamic-batch ONNX"),
    ("10.3.0", ["--int8"], "--int8 needs a Q/DQ ONNX: run clo-export quantize"),
    ("8.5.2", ["--int8", "--dla", "0", "--calib", "imgs/"], "DLA on JetPack 5 (TensorRT 8.5.2) does not take Q/DQ"),
])
def test_plan_refusals(version, args, message, tmp_path, fake_trt):
    fake_trt(version)
    model = tiny_onnx(tmp_path / "m.onnx")
    result, out = run(model, *args)
    assert result.exit_code == 1, result.output
    assert message in out and "Traceback" not in result.output and result.output.count("error:") == 1
    assert not list(tmp_path.glob("*.engine*"))


def test_qdq_onnx_must_be_built_int8(tmp_path, fake_trt):
    fake_trt("10.3.0")
    result, out = run(tiny_onnx(tmp_path / "m.int8.onnx", qdq=True), "--fp16")
    assert result.exit_code == 1 and "this ONNX holds Q/DQ (INT8) nodes; build it with --int8" in out


# ---- builds against the fake builder -------------------------------------------------------------

def test_fp16_build_on_8_writes_engine_sidecar_and_table(tmp_path, fake_trt):
    fake_trt("8.5.2.2")
    model = tiny_onnx(tmp_path / "best.onnx")
    result, out = run(model, "--fp16", "--workspace", "2", "--timing-cache", tmp_path / "tc.bin")
    assert result.exit_code == 0, result.output
    engine = tmp_path / "best.fp16.engine"
    assert engine.read_bytes() == b"ENGINE-BYTES"  # nothing prepended
    side = EngineSidecar.read(engine)
    assert (side.tensorrt_version, side.gpu_name, side.compute_capability, side.precision) == (
        "8.5.2.2", GPU[0], (9, 0), "fp16")
    assert side.names == ("circle", "square", "star") and side.stride == 32 and side.imgsz == (64, 64)
    assert side.source_onnx == "best.onnx" and len(side.source_onnx_sha256) == 64 and side.profile is None
    for text in ("fp16 (builder flags FP16)", "built from best.onnx", "2 in the network", "engine size",
                 "TensorRT 8.5.2.2", "NVIDIA H100 80GB HBM3 (sm_90)", "timing cache", "best.fp16.engine.json",
                 "Softmax layers pinned to FP32"):
        assert text in out, text
    assert (tmp_path / "tc.bin").is_file()


def test_fp16_on_11_makes_the_fp16_onnx_first(tmp_path, fake_trt):
    fake_trt("11.4.0.106")
    model = tiny_onnx(tmp_path / "best.onnx")
    result, out = run(model, "--fp16", "-o", tmp_path / "out" / "m.engine")
    assert result.exit_code == 0, result.output
    made = onnx.load(str(tmp_path / "best.fp16.onnx"))
    assert made.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert "made best.fp16.onnx" in out and "built from best.fp16.onnx" in out and "strongly typed" in out
    assert json.loads((tmp_path / "out" / "m.engine.json").read_text())["precision"] == "fp16"


def test_fp16_on_11_refuses_converting_an_nms_onnx(tmp_path, fake_trt):
    fake_trt("11.4.0")
    result, out = run(tiny_onnx(tmp_path / "best.onnx", nms=True), "--fp16")
    assert result.exit_code == 1 and "--half --nms" in out


def test_int8_qdq_dynamic_batch_on_10(tmp_path, fake_trt):
    fake_trt("10.3.0")
    model = tiny_onnx(tmp_path / "best.int8.onnx", qdq=True, batch=None)
    result, out = run(model, "--int8", "--batch-range", "1,4,8")
    assert result.exit_code == 0, result.output
    side = EngineSidecar.read(tmp_path / "best.int8.engine")
    assert side.profile == ((1, 3, 64, 64), (4, 3, 64, 64), (8, 3, 64, 64)) and side.precision == "int8"
    assert "batch 1…8, opt 4" in out and "builder flags FP16+INT8" in out


def test_implicit_calibrator_from_a_cache_file(tmp_path, fake_trt, monkeypatch):
    fake_trt("8.6.1")
    made = {}

    def fake_make_calibrator(data, method, cache_path, device=None):
        made.update(data=data, method=method, cache=cache_path, device=device)
        return object()

    monkeypatch.setattr("clo_export.calib.trt_calibrator.make_calibrator", fake_make_calibrator)
    monkeypatch.setattr("clo_export.backends.cuda_memory.select_provider", lambda prefer=None, device=0: "memory")
    cache = tmp_path / "calib.cache"
    cache.write_bytes(b"TRT-8601-EntropyCalibration2\n")
    result, out = run(tiny_onnx(tmp_path / "best.onnx"), "--int8", "--calibrator", "entropy", "--calib", cache)
    assert result.exit_code == 0, result.output
    assert made == dict(data=[], method="entropy", cache=cache, device="memory")
    assert "calibrator IInt8EntropyCalibrator2" in out


def test_calibration_inputs(tmp_path):
    facts = cli.read_onnx_facts(tiny_onnx(tmp_path / "m.onnx"))
    flags = cli.validate_flags(tmp_path / "m.onnx", int8=True, calib=[str(tmp_path / "missing.cache")],
                               calibrator="minmax")
    with pytest.raises(CloExportError, match="calibration cache .* does not exist"):
        cli.calibration_inputs(flags, facts, tmp_path / "m.engine", 1)
    import cv2

    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for i in range(20):
        cv2.imwrite(str(imgs / f"{i}.jpg"), np.full((40, 50, 3), i * 10, np.uint8))
    flags = cli.validate_flags(tmp_path / "m.onnx", int8=True, calib=[str(imgs)], calibrator="minmax", num=16)
    data, cache = cli.calibration_inputs(flags, facts, tmp_path / "m.int8.engine", 2)
    assert cache == tmp_path / "m.int8.minmax.cache" and len(data) == 8
    first = next(iter(data))
    assert first["images"].shape == (2, 3, 64, 64) and first["images"].dtype == np.float32


def test_output_must_not_overwrite_the_onnx(tmp_path, fake_trt):
    fake_trt("10.3.0")
    model = tiny_onnx(tmp_path / "m.onnx")
    result, out = run(model, "-o", model)
    assert result.exit_code == 1 and "would overwrite the ONNX" in out
