"""TensorRTRunner on CPU: a recording fake ``tensorrt`` (named-tensor API only) over the fake cudart.

The fake engine reads its inputs from the device addresses set with ``set_tensor_address`` and
writes its outputs there in ``execute_async_v3``, so a correct result proves the whole path:
sidecar check, deserialization, I/O discovery, dynamic shapes, pinned staging, async copies.
"""

from __future__ import annotations

import ctypes
import json
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from clo_export.backends import trt as trt_backend
from clo_export.backends.trt import IOTensor, TensorRTRunner, deserialize_error, numpy_dtype, prepare_input
from clo_export.engine.sidecar import EngineSidecar
from clo_export.errors import CloExportError
from tests.test_cuda_memory import fake_cudart, importer_for

MAGIC = b"FAKE-TRT\n"
MAGIC_ERROR = ("1: [stdArchiveReader.cpp::StdArchiveReader::32] Error Code 1: Serialization (Serialization "
               "assertion magicTagRead == kMAGIC_TAG failed.Magic tag does not match)")
VERSION_ERROR = ("6: The engine plan file is not compatible with this version of TensorRT, expecting library "
                 "version 10.3.0.26 got 8.6.1.6, please rebuild. Serialization assertion stdVersionRead == "
                 "kSERIALIZATION_VERSION failed.Version tag does not match.")


class Rec:
    """Records every public attribute touched on TensorRT objects (checked against the API lists)."""

    seen: set[str] = set()

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            Rec.seen.add(name)
        return object.__getattribute__(self, name)


class _Member:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"DataType.{self.name}"


class _Enum(Rec):
    def __init__(self, *names: str):
        for n in names:
            object.__setattr__(self, n, _Member(n))


class FakeContext(Rec):
    def __init__(self, engine: FakeEngine):
        self._engine, self._shapes, self._addr = engine, {}, {}
        self._handles: list[int] = []

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        lo, _, hi = self._engine._spec[name]["profile"]
        if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
            return False
        self._shapes[name] = tuple(shape)
        return True

    def _batch(self) -> int:
        spec = self._engine._spec["images"]["shape"]
        return self._shapes.get("images", spec)[0]

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        shape = tuple(self._engine._spec[name]["shape"])
        if self._engine._spec[name]["mode"] == "INPUT":
            return self._shapes.get(name, shape)
        return tuple(self._batch() if d == -1 else d for d in shape)

    def set_tensor_address(self, name: str, ptr: int) -> bool:
        self._addr[name] = int(ptr)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        assert isinstance(stream_handle, int)
        self._handles.append(stream_handle)
        spec = self._engine._spec
        shape = self.get_tensor_shape("images")
        dt = numpy_dtype(spec["images"]["dtype"])
        n = int(np.prod(shape)) * dt.itemsize
        images = np.frombuffer(ctypes.string_at(self._addr["images"], n), dt).reshape(shape).astype(np.float32)
        for name in [k for k, v in spec.items() if v["mode"] == "OUTPUT"]:
            out_shape = self.get_tensor_shape(name)
            odt = numpy_dtype(spec[name]["dtype"])
            if name == "output0":
                b, i, j = np.meshgrid(*[np.arange(d) for d in out_shape], indexing="ij")
                value = images.mean(axis=(1, 2, 3))[b] + i + j / 10
            else:
                value = np.arange(out_shape[0]).reshape(out_shape) + 1
            data = np.ascontiguousarray(value.astype(odt))
            ctypes.memmove(self._addr[name], data.ctypes.data, data.nbytes)
        return True


class FakeEngine(Rec):
    def __init__(self, spec: dict[str, dict], layers: int):
        self._spec = spec
        self._names = list(spec)
        self.num_io_tensors = len(spec)
        self.num_layers = layers
        self._contexts: list[FakeContext] = []

    def get_tensor_name(self, i: int) -> str:
        return self._names[i]

    def get_tensor_mode(self, name: str) -> Any:
        return object.__getattribute__(FAKE_MODES, self._spec[name]["mode"])  # not recorded: fake-internal

    def get_tensor_dtype(self, name: str) -> Any:
        return object.__getattribute__(FAKE_TYPES, self._spec[name]["dtype"])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._spec[name]["shape"])

    def get_tensor_profile_shape(self, name: str, profile: int) -> list[tuple[int, ...]]:
        assert profile == 0
        return [tuple(s) for s in self._spec[name]["profile"]]

    def create_execution_context(self) -> FakeContext:
        ctx = FakeContext(self)
        self._contexts.append(ctx)
        return ctx


FAKE_MODES = _Enum("INPUT", "OUTPUT")
FAKE_TYPES = _Enum("FLOAT", "HALF", "INT8", "INT32", "BF16")


class FakeRuntime(Rec):
    def __init__(self, logger: Any):
        self._logger = logger

    def deserialize_cuda_engine(self, data: bytes) -> FakeEngine | None:
        FakeTrt.deserialized += 1
        if not data.startswith(MAGIC):
            self._logger.log(1, MAGIC_ERROR)
            return None
        body = json.loads(data[len(MAGIC):])
        if body.get("built_by") != FakeTrt.version:
            self._logger.log(1, VERSION_ERROR)
            return None
        return FakeEngine(body["io"], body["layers"])


class _ILogger:
    def __init__(self) -> None:
        pass


class FakeTrt(Rec):
    deserialized = 0
    version = "10.3.0.26"

    def __init__(self, version: str = "10.3.0.26"):
        FakeTrt.version = version
        FakeTrt.deserialized = 0
        for k, v in dict(__version__=version, ILogger=_ILogger, Runtime=FakeRuntime, TensorIOMode=FAKE_MODES,
                         DataType=FAKE_TYPES).items():
            object.__setattr__(self, k, v)


def io_spec(dynamic: bool = False, in_dtype: str = "FLOAT", out_dtype: str = "HALF") -> dict[str, dict]:
    b = -1 if dynamic else 2
    spec = {"images": {"mode": "INPUT", "dtype": in_dtype, "shape": [b, 3, 8, 8]},
            "output0": {"mode": "OUTPUT", "dtype": out_dtype, "shape": [b, 5, 7]},
            "num_dets": {"mode": "OUTPUT", "dtype": "INT32", "shape": [b, 1]}}
    if dynamic:
        spec["images"]["profile"] = [[1, 3, 8, 8], [4, 3, 8, 8], [8, 3, 8, 8]]
    return spec


def write_engine(tmp_path: Path, spec: dict | None = None, built_by: str = "10.3.0.26", side_version: str = "10.3.0",
                 gpu: str = "NVIDIA H100 80GB HBM3", cc=(9, 0), raw: bytes | None = None, sidecar: bool = True) -> Path:
    path = tmp_path / "m.engine"
    body = {"io": spec or io_spec(), "layers": 42, "built_by": built_by}
    path.write_bytes(raw if raw is not None else MAGIC + json.dumps(body).encode())
    if sidecar:
        EngineSidecar("" + side_version, gpu, cc, "fp16", "images", (2, 3, 8, 8), ("output0", "num_dets"), ("a", "b"),
                      32, (8, 8), "m.onnx", "0" * 64, 1.0).write(path)
    return path


@pytest.fixture()
def gpu(monkeypatch):
    """Fake tensorrt in sys.modules and the fake cuda-python as the only device-buffer provider."""
    fake = FakeTrt()
    rt = fake_cudart()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.delenv("CLO_EXPORT_CUDA", raising=False)
    from clo_export.backends import cuda_memory

    real = cuda_memory.select_provider
    monkeypatch.setattr(cuda_memory, "select_provider", lambda prefer=None, device=0: real(
        prefer, device, importer_for(**{"cuda.bindings.runtime": rt})))
    return types.SimpleNamespace(trt=fake, rt=rt)


# ---- pure parts ------------------------------------------------------------------------------

def test_numpy_dtypes():
    assert numpy_dtype(_Member("HALF")) == np.float16 and numpy_dtype("DataType.INT8") == np.int8
    assert numpy_dtype("INT32") == np.int32 and numpy_dtype("FLOAT") == np.float32
    with pytest.raises(CloExportError, match="BF16 has no numpy equivalent"):
        numpy_dtype(_Member("BF16"))


def test_prepare_input_casts_and_checks_shapes():
    static = IOTensor("images", True, np.dtype(np.float16), (1, 3, 8, 8))
    out = prepare_input(static, np.ones((1, 3, 8, 8), np.float32))
    assert out.dtype == np.float16 and out.flags.c_contiguous
    with pytest.raises(CloExportError, match=r"shape \(1, 3, 16, 16\) but the engine takes 1x3x8x8"):
        prepare_input(static, np.ones((1, 3, 16, 16), np.float32))
    with pytest.raises(CloExportError, match="INT8-I/O engine needs already quantized input"):
        prepare_input(IOTensor("images", True, np.dtype(np.int8), (1, 3, 8, 8)), np.ones((1, 3, 8, 8), np.float32))
    dyn = IOTensor("images", True, np.dtype(np.float32), (-1, 3, 8, 8), ((1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8)))
    assert prepare_input(dyn, np.zeros((3, 3, 8, 8))).shape == (3, 3, 8, 8)
    with pytest.raises(CloExportError, match="outside the engine's profile .* --batch-range"):
        prepare_input(dyn, np.zeros((5, 3, 8, 8), np.float32))


def test_deserialize_errors_are_one_line_rebuild_hints():
    side = EngineSidecar("8.6.1", "Orin", (8, 7), "int8", "images", (1, 3, 640, 640), ("output0",), ("a",), 32,
                         (640, 640), "best.onnx", "0", 1.0)
    e = deserialize_error("best.engine", ["some warning", MAGIC_ERROR], "10.3.0", side)
    msg = str(e)
    assert "\n" not in msg and "Magic tag does not match" in msg and "built with TensorRT 8.6.1 on Orin" in msg
    assert msg.endswith("rebuild it on this device with: clo-export trt best.onnx --int8")
    assert "Version tag" in str(deserialize_error("x.engine", [VERSION_ERROR], "10.3.0", None))
    generic = str(deserialize_error("x.engine", [], "10.3.0", None))
    assert "no details from TensorRT" in generic and "clo-export trt MODEL.onnx" in generic


def test_device_index():
    assert [trt_backend.device_index(d) for d in (None, "cuda", 1, "cuda:2", "3")] == [0, 0, 1, 2, 3]
    with pytest.raises(CloExportError, match="TensorRT engines run on cuda"):
        trt_backend.device_index("cpu")


def test_both_names_are_exported():
    assert trt_backend.TrtRunner is TensorRTRunner


def test_import_and_construction_load_nothing(tmp_path):
    code = ("import sys; import clo_export.backends.trt as t; r = t.TensorRTRunner('missing.engine', 'cuda:1'); "
            "bad = [m for m in ('torch', 'tensorrt', 'cuda', 'pycuda', 'onnx') if m in sys.modules]; "
            "assert not bad, bad; assert r.device == 1 and not r.is_active")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


# ---- activation --------------------------------------------------------------------------------

def test_missing_tensorrt_is_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(CloExportError) as e:
        TensorRTRunner(write_engine(tmp_path)).activate()
    assert "pip install tensorrt" in str(e.value) and "\n" not in str(e.value)


def test_missing_engine_or_sidecar(tmp_path, gpu):
    with pytest.raises(CloExportError, match="does not exist; build one with: clo-export trt"):
        TensorRTRunner(tmp_path / "none.engine").activate()
    path = write_engine(tmp_path, sidecar=False)
    with pytest.raises(CloExportError, match="m.engine.json is missing"):
        TensorRTRunner(path).activate()
    with TensorRTRunner(path, require_sidecar=False) as r:  # a trtexec engine: no version check
        assert r.sidecar is None and r.infer({"images": np.zeros((2, 3, 8, 8), np.float32)})


def test_sidecar_mismatch_refused_before_tensorrt_reads_the_engine(tmp_path, gpu):
    path = write_engine(tmp_path, side_version="8.6.1")
    with pytest.raises(CloExportError) as e:
        TensorRTRunner(path).activate()
    msg = str(e.value)
    assert "engine built with TensorRT 8.6.1" in msg and "this is TensorRT 10.3.0.26" in msg
    assert msg.endswith("rebuild it here with: clo-export trt m.onnx --fp16") and "\n" not in msg
    assert FakeTrt.deserialized == 0
    assert not gpu.rt.device_mem.blocks and not gpu.rt.streams  # nothing left allocated


def test_other_gpu_of_same_arch_warns_and_runs(tmp_path, gpu, caplog):
    path = write_engine(tmp_path, gpu="NVIDIA H100 PCIe")
    with TensorRTRunner(path) as r:
        assert r.warnings and "rebuild here for best speed" in r.warnings[0]
    assert "NVIDIA H100 PCIe" in caplog.text


@pytest.mark.parametrize("raw, words", [(b"garbage", "Magic tag does not match"), (None, "Version tag does not match")])
def test_tensorrt_tag_errors_become_the_rebuild_line(tmp_path, gpu, raw, words):
    path = write_engine(tmp_path, built_by="8.6.1.6", raw=raw)
    with pytest.raises(CloExportError) as e:
        TensorRTRunner(path).activate()
    msg = str(e.value)
    assert words in msg and "rebuild it on this device with: clo-export trt m.onnx --fp16" in msg and "\n" not in msg
    assert not gpu.rt.device_mem.blocks and not gpu.rt.pinned_mem.blocks and not gpu.rt.streams


# ---- inference ---------------------------------------------------------------------------------

def expected(images: np.ndarray) -> np.ndarray:
    b, i, j = np.meshgrid(np.arange(images.shape[0]), np.arange(5), np.arange(7), indexing="ij")
    return images.astype(np.float32).mean(axis=(1, 2, 3))[b] + i + j / 10


def test_static_engine_fp16_outputs(tmp_path, gpu):
    x = np.random.default_rng(0).random((2, 3, 8, 8), dtype=np.float32)
    with TensorRTRunner(write_engine(tmp_path)) as r:
        allocated = len(gpu.rt.device_mem.blocks)
        assert allocated == 3  # static tensors get buffers at activate
        assert [(s.name, s.shape, s.dtype) for s in r.input_specs()] == [("images", (2, 3, 8, 8), np.float32)]
        out = r.infer({"images": x})
        again = r.infer({"images": x * 0})
        assert len(gpu.rt.device_mem.blocks) == allocated  # no per-call allocation
        ctx = r._context
        assert ctx._handles and len(set(ctx._handles)) == 1 and ctx._handles[0] in gpu.rt.streams  # its own stream
    assert out["output0"].dtype == np.float16 and out["num_dets"].dtype == np.int32
    np.testing.assert_allclose(out["output0"], expected(x), rtol=1e-3)
    assert out["num_dets"].ravel().tolist() == [1, 2]
    np.testing.assert_allclose(again["output0"], expected(x * 0), rtol=1e-3)  # fresh arrays, not views
    assert "cudaMallocHost" in gpu.rt.calls and gpu.rt.calls.count("cudaMemcpyAsync") == 6
    assert not gpu.rt.device_mem.blocks and not gpu.rt.pinned_mem.blocks and not gpu.rt.streams  # all freed


def test_dynamic_batch_sets_shapes_and_grows_buffers(tmp_path, gpu):
    with TensorRTRunner(write_engine(tmp_path, io_spec(dynamic=True, in_dtype="HALF"))) as r:
        assert not gpu.rt.device_mem.blocks  # dynamic: allocated on first use
        assert r.input_specs()[0].shape == (None, 3, 8, 8) and r.input_specs()[0].dtype == np.float16
        for bs in (1, 4, 2):
            x = np.full((bs, 3, 8, 8), bs, np.float32)
            out = r.infer({"images": x})
            assert out["output0"].shape == (bs, 5, 7) and out["num_dets"].shape == (bs, 1)
            np.testing.assert_allclose(out["output0"], expected(x), rtol=1e-3)
        assert r._context._shapes["images"] == (2, 3, 8, 8)
        assert gpu.rt.calls.count("cudaMalloc") == 6  # grown once (bs 1 -> 4), reused for bs 2
        with pytest.raises(CloExportError, match="outside the engine's profile"):
            r.infer({"images": np.zeros((9, 3, 8, 8), np.float32)})


def test_feed_errors(tmp_path, gpu):
    with TensorRTRunner(write_engine(tmp_path)) as r:
        with pytest.raises(CloExportError, match=r"the engine takes inputs \['images'\]; got \['x'\] \(missing images\)"):
            r.infer({"x": np.zeros(1)})
        with pytest.raises(CloExportError, match="but the engine takes 2x3x8x8"):
            r.infer({"images": np.zeros((1, 3, 8, 8), np.float32)})


def test_infer_before_activate(tmp_path):
    with pytest.raises(CloExportError, match="before activate"):
        TensorRTRunner(tmp_path / "m.engine").infer({})


def test_engine_layer_count(tmp_path, gpu):
    assert trt_backend.engine_layer_count(write_engine(tmp_path)) == 42
