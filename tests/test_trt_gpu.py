"""Real TensorRT engines of a small model, compared with PyTorch (needs TensorRT, the CUDA runtime and a GPU).

Skipped with the reason when any of them is missing (the `trt_gpu` fixture decides). The small
model is the seed architecture with 3 classes at 256x256 (tests.test_calib_qdq.small_onnx), with
its calibration images; engines are built by the library step `engine.build.build_engine` (one
through the `clo-export trt` command) and run by TensorRTRunner (Polygraphy's TrtRunner).
"""

from __future__ import annotations

import importlib
import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from clo_export.errors import CloExportError

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def trt_gpu():
    """TensorRT, the CUDA runtime and a GPU, or skip saying which is missing."""
    try:
        trt = importlib.import_module("tensorrt")
    except ImportError as e:
        pytest.skip(f"TensorRT is not installed ({e}); pip install -e '.[gpu]' on an NVIDIA machine")
    from clo_export.engine.gpu import gpu_identity

    try:
        name, capability = gpu_identity(0)
    except CloExportError as e:
        pytest.skip(f"no usable GPU or CUDA binding: {e}")
    from clo_export.engine.plan import has
    from clo_export.engine.version import TrtVersion

    version = TrtVersion.parse(trt.__version__)
    return types.SimpleNamespace(
        trt=trt, version=version, gpu=name, capability=capability, implicit=has(version, "implicit_calibrators")
    )


@pytest.fixture(scope="module")
def small(trt_gpu, tmp_path_factory):
    """The small FP32 ONNX, its checkpoint and calibration images in a fresh folder, and test inputs."""
    from tests.helpers import small_onnx

    src = small_onnx()
    root = tmp_path_factory.mktemp("trt-gpu")
    for name in ("small.onnx", "small.pt"):
        shutil.copy(src.parent / name, root / name)
    shutil.copytree(src.parent / "calib", root / "calib")
    from clo_export.artifacts import read_metadata
    from clo_export.data.files import read_images
    from clo_export.data.preprocess import preprocess_batch

    imgsz = tuple(read_metadata(root / "small.onnx").imgsz)
    frames = list(read_images(root / "calib", 8))
    inputs = [preprocess_batch([f], imgsz)[0] for f in frames]
    inputs.append(np.random.default_rng(0).random((1, 3, *imgsz), dtype=np.float32))
    return types.SimpleNamespace(root=root, onnx=root / "small.onnx", pt=root / "small.pt", inputs=inputs)


def build_with(onnx_path: Path, out: Path, **request):
    """The library step, as `clo-export demo` and scripts/gpu-check call it."""
    from clo_export.engine.build import build_engine
    from clo_export.engine.plan import BuildRequest

    calib = request.pop("calib", ())
    return build_engine(onnx_path, BuildRequest(**request), out, calib=calib, num=16)


def build(*args) -> str:
    """The clo-export trt command."""
    from clo_export.cli.trt import trt

    app = typer.Typer()
    app.command("trt")(trt)
    app.callback()(lambda: None)
    result = CliRunner().invoke(app, ["trt", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result.output


def compare_with_pytorch(engine: Path, small, precision: str, reference_runner=None):
    """Accumulated Report of the engine against the PyTorch checkpoint on the small inputs."""
    from clo_export.backends.pytorch import TorchRunner
    from clo_export.backends.trt import TensorRTRunner
    from clo_export.comparator import Comparator, Comparison
    from clo_export.models.checkpoint import load

    with TensorRTRunner(engine) as test, TorchRunner(load(small.pt).model, "cpu") as ref:
        return Comparator(ref, Comparison(precision)).report(test, ({"images": x} for x in small.inputs))


def test_fp32_and_fp16_engines_match_pytorch(trt_gpu, small):
    """FP32 engines (TF32 off, as Polygraphy's CreateConfig defaults) are judged with the FP16 limits until a
    GPU run has shown they meet the FP32 ones."""
    for precision in ("fp32", "fp16"):
        out = small.root / f"small.{precision}.engine"
        done = build_with(small.onnx, out, precision=precision)
        side = json.loads(Path(f"{out}.json").read_text())
        assert done.engine_path == out and done.plan.precision == precision and done.sidecar.precision == precision
        assert side["precision"] == precision and side["compute_capability"] == list(trt_gpu.capability)
        assert side["parity"]["status"] == "passed" and done, side["parity"]["failures"]  # its own check, on the GPU
        report = compare_with_pytorch(out, small, "fp16")
        assert report, f"{precision}: " + "; ".join(report.failures)


def test_int8_qdq_engine_agrees_with_pytorch_as_well_as_onnxruntime(trt_gpu, small):
    """TensorRT's INT8 must be as close to PyTorch as ONNX Runtime's simulation of the same Q/DQ model."""
    from clo_export.backends.onnxrt import OnnxRuntimeRunner
    from clo_export.backends.pytorch import TorchRunner
    from clo_export.comparator import Comparator, Comparison
    from clo_export.models.checkpoint import load

    out = small.root / "small.int8.engine"
    build(small.onnx, "--int8", "--calib", small.root / "calib", "--num", "16", "-o", out)
    qdq = small.root / "small.int8.onnx"
    assert qdq.is_file()
    trt_report = compare_with_pytorch(out, small, "int8")
    with OnnxRuntimeRunner(qdq, ["CPUExecutionProvider"]) as ort, TorchRunner(load(small.pt).model, "cpu") as ref:
        ort_f1 = Comparator(ref, Comparison("int8")).report(ort, ({"images": x} for x in small.inputs)).detections.f1
    assert trt_report.detections.f1 >= ort_f1 - 0.1, (trt_report.detections, ort_f1)


def test_implicit_calibrator_engine(trt_gpu, small):
    if not trt_gpu.implicit:
        pytest.skip(f"TensorRT {trt_gpu.version} has no implicit INT8 calibrators (removed in 11)")
    out = small.root / "small.entropy.engine"
    build_with(small.onnx, out, precision="int8", calibrator="entropy", calib=(str(small.root / "calib"),))
    assert (small.root / "small.entropy.entropy.cache").is_file()
    report = compare_with_pytorch(out, small, "int8")
    assert report.detections is not None and report.detections.n_ref > 0


def test_engine_from_another_tensorrt_is_refused_with_the_rebuild_command(trt_gpu, small):
    from clo_export.backends.trt import TensorRTRunner

    out = small.root / "small.fp16.engine"
    if not out.is_file():
        build(small.onnx, "--fp16", "-o", out)
    copy = small.root / "copy.engine"
    shutil.copy(out, copy)
    side = json.loads(Path(f"{out}.json").read_text())
    side["tensorrt_version"] = "8.5.2" if trt_gpu.version.major >= 10 else "10.3.0"
    Path(f"{copy}.json").write_text(json.dumps(side))
    with pytest.raises(CloExportError, match="rebuild it here with: clo-export trt small.onnx --fp16"):
        TensorRTRunner(copy).activate()
    Path(f"{copy}.json").unlink()
    copy.write_bytes(b"\0" * 64)  # not an engine: TensorRT's own serialization error, same hint
    with pytest.raises(CloExportError, match="rebuild it on this device with"):
        TensorRTRunner(copy, require_sidecar=False).activate()


def test_polygraphy_cuda_round_trip_and_stream(trt_gpu):
    """The CUDA layer we rely on instead of pycuda: host -> device -> host through polygraphy.cuda on a stream."""
    from polygraphy import cuda

    host = np.arange(1 << 20, dtype=np.float32)
    back = np.empty_like(host)
    with cuda.Stream() as stream, cuda.DeviceArray(shape=host.shape, dtype=host.dtype) as dev:
        dev.copy_from(host, stream)
        dev.copy_to(back, stream)
        stream.synchronize()
    assert np.array_equal(host, back)
