"""TensorRTRunner's parts that run without a GPU: input preparation, device names, the rebuild hint,
lazy imports, and the one-line errors before TensorRT is asked (the GPU runs are in test_trt_gpu)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from clo_export.artifacts import rebuild_command
from clo_export.backends.trt import InputSpec, TensorRTRunner, prepare_input
from clo_export.engine.sidecar import EngineSidecar
from clo_export.errors import CloExportError

SIDE = EngineSidecar(
    "8.6.1",
    "Orin",
    (8, 7),
    "int8",
    "images",
    (1, 3, 640, 640),
    ("output0",),
    ("a",),
    32,
    (640, 640),
    "best.onnx",
    "0",
    1.0,
)


def test_prepare_input_casts_and_checks_shapes():
    static = InputSpec("images", np.dtype(np.float16), (1, 3, 8, 8))
    out = prepare_input(static, np.ones((1, 3, 8, 8), np.float32))
    assert out.dtype == np.float16 and out.flags.c_contiguous
    with pytest.raises(CloExportError, match=r"shape \(1, 3, 16, 16\) but the engine takes 1x3x8x8"):
        prepare_input(static, np.ones((1, 3, 16, 16), np.float32))
    with pytest.raises(CloExportError, match="INT8-I/O engine needs already quantized input"):
        prepare_input(InputSpec("images", np.dtype(np.int8), (1, 3, 8, 8)), np.ones((1, 3, 8, 8), np.float32))
    dyn = InputSpec("images", np.dtype(np.float32), (-1, 3, 8, 8))
    assert prepare_input(dyn, np.zeros((3, 3, 8, 8))).shape == (3, 3, 8, 8)
    with pytest.raises(CloExportError, match="engine takes \\?x3x8x8"):
        prepare_input(dyn, np.zeros((3, 3, 8)))


def test_rebuild_command():
    assert SIDE.rebuild_command() == rebuild_command("best.onnx", "int8") == "clo-export trt best.onnx --int8"
    assert rebuild_command() == "clo-export trt MODEL.onnx"


def test_device_names():
    assert [TensorRTRunner("m.engine", d).device for d in (None, "cuda", 1, "cuda:2")] == [0, 0, 1, 2]
    with pytest.raises(CloExportError, match="TensorRT engines run on the GPU; drop --device cpu"):
        TensorRTRunner("m.engine", "cpu")
    with pytest.raises(CloExportError, match="'3' is not a device; use cpu, cuda or cuda:N"):
        TensorRTRunner("m.engine", "3")


def test_import_and_construction_load_nothing():
    code = (
        "import sys; import clo_export.backends.trt as t; r = t.TensorRTRunner('missing.engine', 'cuda:1'); "
        "bad = [m for m in ('torch', 'tensorrt', 'polygraphy', 'pycuda', 'cuda', 'onnx') if m in sys.modules]; "
        "assert not bad, bad; assert r.device == 1 and not r.is_active"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_missing_engine_or_sidecar(tmp_path):
    with pytest.raises(CloExportError, match="does not exist; build one with: clo-export trt"):
        TensorRTRunner(tmp_path / "none.engine").activate()
    (tmp_path / "m.engine").write_bytes(b"x")
    with pytest.raises(CloExportError, match="m.engine.json is missing"):
        TensorRTRunner(tmp_path / "m.engine").activate()


def test_missing_tensorrt_is_the_install_hint(tmp_path, monkeypatch):
    (tmp_path / "m.engine").write_bytes(b"x")
    (tmp_path / "m.engine.json").write_text(json.dumps(SIDE.__dict__, default=list))
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(CloExportError, match="pip install tensorrt .*JetPack"):
        TensorRTRunner(tmp_path / "m.engine").activate()


def test_infer_before_activate(tmp_path):
    with pytest.raises(CloExportError, match="before activate"):
        TensorRTRunner(tmp_path / "m.engine").infer({"images": np.zeros((1, 3, 8, 8), np.float32)})
