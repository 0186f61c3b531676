"""load_runner picks the backend from the file; PyTorch and ONNX Runtime agree on real frames."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from clo_export.artifacts import ModelInfo
from clo_export.backends import select
from clo_export.backends.device import device_index
from clo_export.backends.onnxrt import OnnxRuntimeRunner, providers_for_device
from clo_export.backends.select import backend_for, load_runner, load_runners
from clo_export.backends.streams import plan_streams
from clo_export.data.preprocess import preprocess
from clo_export.errors import CloExportError
from clo_export.postprocess import detections_from_nms_outputs, nms
from clo_export.report import detection_agreement
from tests.helpers import IMGSZ, NAMES, scene


@pytest.mark.parametrize("name, backend", [("a.pt", "pytorch"), ("a.onnx", "onnxruntime"), ("a.ENGINE", "tensorrt")])
def test_backend_comes_from_the_suffix(name, backend):
    assert backend_for(name) == backend


def test_unknown_suffix_and_missing_file_are_clear_errors(tmp_path):
    with pytest.raises(CloExportError, match="cannot tell the backend"):
        backend_for("model.tflite")
    with pytest.raises(CloExportError, match="does not exist"):
        load_runner(tmp_path / "missing.onnx")


def test_onnx_info_comes_from_the_metadata(art):
    runner, info = load_runner(art.onnx, "cpu")
    assert isinstance(runner, OnnxRuntimeRunner) and not runner.is_active
    assert info == ModelInfo(str(art.onnx), "onnxruntime", dict(enumerate(NAMES)), (IMGSZ, IMGSZ), 32, "fp32")
    _, nms_info = load_runner(art.nms_onnx, "cpu")
    assert nms_info.nms and nms_info.nms_conf == pytest.approx(0.25) and nms_info.nms_max_det == 300
    with pytest.raises(CloExportError, match="takes 128x128 inputs only"):
        load_runner(art.onnx, "cpu", imgsz=(256, 256))


@pytest.mark.parametrize(
    "workers, threads, cores, plan",
    [
        (None, None, 2, (2, 1)),
        (None, None, 16, (2, 8)),
        (None, None, 1, (1, None)),
        (1, None, 16, (1, None)),
        (3, None, 16, (3, 5)),
        (4, None, 2, (4, 1)),
        (None, 3, 16, (2, 3)),
    ],
)
def test_cpu_streams_split_the_cores(workers, threads, cores, plan):
    assert plan_streams(workers, threads, cores) == plan


def test_bad_stream_counts_are_clear_errors():
    with pytest.raises(CloExportError, match="--workers 0 must be at least 1"):
        plan_streams(0, None, 4)
    with pytest.raises(CloExportError, match="--threads 0 must be at least 1"):
        plan_streams(None, 0, 4)


def test_load_runners_gives_cpu_sessions_and_one_stream_elsewhere(art, monkeypatch):
    monkeypatch.setattr(select, "usable_cores", lambda: 8)
    runners, info = load_runners(art.onnx, "cpu")
    assert [type(r) for r in runners] == [OnnxRuntimeRunner] * 2 and [r.threads for r in runners] == [4, 4]
    assert info.backend == "onnxruntime" and runners[0] is not runners[1]
    assert [r.threads for r in load_runners(art.onnx, "cpu", workers=1)[0]] == [None]
    pt, _ = load_runners(art.pt, "cpu")
    assert len(pt) == 1
    with pytest.raises(CloExportError, match="runs on PyTorch with one stream: drop --workers"):
        load_runners(art.pt, "cpu", workers=2)


def test_device_choices():
    assert providers_for_device(None) is None
    assert providers_for_device("cpu") == ["CPUExecutionProvider"]
    assert providers_for_device("cuda:1")[0] == "CUDAExecutionProvider"
    with pytest.raises(CloExportError, match="not a device"):
        providers_for_device("tpu")


@pytest.mark.parametrize("device, index", [(None, 0), ("cuda", 0), ("cuda:0", 0), ("cuda:1", 1), (2, 2), ("cpu", None)])
def test_one_reading_of_device(device, index):
    assert device_index(device) == index


@pytest.mark.parametrize("device", ["tpu", "cuda:", "cuda:x", "cuda:-1", "CUDA", "1", "gpu:0", -1, True])
def test_a_bad_device_is_one_clear_line(device):
    with pytest.raises(CloExportError) as e:
        device_index(device)
    assert str(e.value) == f"--device '{device}' is not a device; use cpu, cuda or cuda:N"


@pytest.mark.parametrize("device", ["tpu", "cuda:x"])
def test_every_backend_refuses_a_bad_device_the_same_way(art, device):
    for model in (art.onnx, art.pt):
        with pytest.raises(CloExportError, match=f"'{device}' is not a device; use cpu, cuda or cuda:N"):
            load_runner(model, device)[0].activate()


def test_cuda_without_onnxruntime_gpu_is_a_clear_error(art):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("CUDA provider present")
    runner, _ = load_runner(art.onnx, "cuda:0")
    with pytest.raises(CloExportError, match="onnxruntime-gpu"):
        runner.activate()


def _engine_with_sidecar(tmp_path, output_names=("output0",)):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"not really an engine")
    side = {
        "tensorrt_version": "10.3.0",
        "gpu_name": "Orin",
        "compute_capability": [8, 7],
        "precision": "fp16",
        "input_name": "images",
        "input_shape": [1, 3, 128, 128],
        "output_names": list(output_names),
        "names": NAMES,
        "stride": 32,
        "imgsz": [128, 128],
        "source_onnx": "m.onnx",
        "source_onnx_sha256": "0",
        "build_seconds": 1.0,
    }
    (tmp_path / "m.engine.json").write_text(json.dumps(side))
    return engine


def test_engine_without_tensorrt_backend_is_one_clear_line(tmp_path, monkeypatch):
    engine = _engine_with_sidecar(tmp_path)
    monkeypatch.setitem(sys.modules, "clo_export.backends.trt", None)  # as if the module or tensorrt were missing
    with pytest.raises(CloExportError) as e:
        load_runner(engine)
    assert "not installed" in str(e.value) and "\n" not in str(e.value)


def test_engine_routes_to_the_trt_runner_with_info_from_the_sidecar(tmp_path, monkeypatch):
    import types

    engine = _engine_with_sidecar(tmp_path, ("num_dets", "boxes", "scores", "classes"))
    fake = types.ModuleType("clo_export.backends.trt")
    fake.TensorRTRunner = lambda path, device: ("trt", path, device)
    monkeypatch.setitem(sys.modules, "clo_export.backends.trt", fake)
    runner, info = load_runner(engine, "cuda:1")
    assert runner == ("trt", engine, "cuda:1")
    assert info.backend == "tensorrt" and info.names == dict(enumerate(NAMES)) and info.nms and info.precision == "fp16"


def test_an_engine_on_the_cpu_is_refused_in_one_line(tmp_path):
    with pytest.raises(CloExportError, match="TensorRT engines run on the GPU; drop --device cpu or pass the .onnx"):
        load_runner(_engine_with_sidecar(tmp_path), "cpu")


def test_engine_without_sidecar_says_how_to_rebuild(tmp_path):
    (tmp_path / "m.engine").write_bytes(b"x")
    with pytest.raises(CloExportError, match="clo-export trt"):
        load_runner(tmp_path / "m.engine")


def test_pytorch_and_onnxruntime_agree_on_raw_outputs_and_detections(art):
    pt, pt_info = load_runner(art.pt, "cpu")
    ort, _ = load_runner(art.onnx, "cpu")
    ort_nms, _ = load_runner(art.nms_onnx, "cpu")
    assert pt_info.imgsz == (IMGSZ, IMGSZ) and pt_info.names == dict(enumerate(NAMES))
    rng = np.random.default_rng(3)
    with pt, ort, ort_nms:
        for _ in range(3):
            x, _ = preprocess(scene(rng), IMGSZ)
            ref, test = pt.infer({"images": x})["output0"], ort.infer({"images": x})["output0"]
            np.testing.assert_allclose(test[..., :4], ref[..., :4], atol=1e-3)
            np.testing.assert_allclose(test[..., 4:], ref[..., 4:], atol=1e-5)
            ref_dets = nms(ref)
            assert len(ref_dets[0]) > 0
            assert detection_agreement(ref_dets, nms(test)).f1 == 1.0
            assert detection_agreement(ref_dets, detections_from_nms_outputs(ort_nms.infer({"images": x}))).f1 == 1.0
