"""Device-buffer providers against small fakes that keep each binding's real call signatures.

cuda-python returns ``(cudaError_t, value...)`` tuples and takes ``cudaMemcpyKind`` members;
pycuda raises ``pycuda.driver.Error`` and hands out ``DeviceAllocation`` objects (``int()`` is the
pointer); torch works on tensors. The fakes' "device memory" is ctypes host memory, so copies
really move bytes and a round trip proves the pointer plumbing.
"""

from __future__ import annotations

import contextlib
import ctypes
import enum
import types
import warnings

import numpy as np
import pytest

from clo_export.backends import cuda_memory as cm
from clo_export.errors import CloExportError


class _Memory:
    """ctypes buffers standing in for device allocations, addressed by int pointers."""

    def __init__(self) -> None:
        self.blocks: dict[int, ctypes.Array] = {}

    def new(self, nbytes: int) -> int:
        buf = ctypes.create_string_buffer(max(nbytes, 1))
        self.blocks[ctypes.addressof(buf)] = buf
        return ctypes.addressof(buf)

    def owns(self, ptr: int, nbytes: int) -> bool:
        return any(base <= ptr and ptr + nbytes <= base + len(buf) for base, buf in self.blocks.items())


# ---- cuda-python (cuda.bindings.runtime / cuda.cudart) ---------------------------------------

class cudaError_t(enum.IntEnum):  # noqa: N801 (the binding's name)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100
    cudaErrorInvalidDevice = 101


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2


class cudaStream_t:  # noqa: N801
    _next = 0x5000

    def __init__(self) -> None:
        cudaStream_t._next += 16
        self._ptr = cudaStream_t._next

    def __int__(self) -> int:
        return self._ptr


def fake_cudart(name: str = "cuda.bindings.runtime", gpu: bytes = b"NVIDIA H100 80GB HBM3", cc=(9, 0),
                devices: int = 1, fail: dict[str, cudaError_t] | None = None) -> types.ModuleType:
    """A cuda-python runtime module: same function names, argument order and (err, value) returns."""
    rt = types.ModuleType(name)
    dev, host = _Memory(), _Memory()
    fail = fail or {}
    rt.calls, rt.device_mem, rt.pinned_mem, rt.streams = [], dev, host, set()
    rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t
    ok = cudaError_t.cudaSuccess

    def call(fn):
        def wrapper(*args):
            rt.calls.append(fn.__name__)
            if fn.__name__ in fail:
                return (fail[fn.__name__], None) if fn.__name__ in ("cudaMalloc", "cudaMallocHost") else (fail[fn.__name__],)
            return fn(*args)
        setattr(rt, fn.__name__, wrapper)
        return wrapper

    @call
    def cudaSetDevice(device):  # noqa: N802
        assert isinstance(device, int)
        return (ok,) if device < devices else (cudaError_t.cudaErrorInvalidDevice,)

    @call
    def cudaGetDeviceProperties(device):  # noqa: N802
        prop = types.SimpleNamespace(name=gpu.ljust(256, b"\0"), major=cc[0], minor=cc[1])
        return ok, prop

    @call
    def cudaMalloc(size):  # noqa: N802
        assert isinstance(size, int) and size >= 0
        return ok, dev.new(size)

    @call
    def cudaFree(ptr):  # noqa: N802
        return (ok,) if dev.blocks.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    @call
    def cudaMallocHost(size):  # noqa: N802
        return ok, host.new(size)

    @call
    def cudaFreeHost(ptr):  # noqa: N802
        return (ok,) if host.blocks.pop(int(ptr), None) is not None else (cudaError_t.cudaErrorInvalidValue,)

    @call
    def cudaStreamCreate():  # noqa: N802
        s = cudaStream_t()
        rt.streams.add(int(s))
        return ok, s

    @call
    def cudaStreamDestroy(stream):  # noqa: N802
        rt.streams.discard(int(stream))
        return (ok,)

    @call
    def cudaStreamSynchronize(stream):  # noqa: N802
        assert int(stream) in rt.streams
        return (ok,)

    def _copy(dst, src, count, kind):
        assert isinstance(kind, cudaMemcpyKind), "kind must be a cudaMemcpyKind member"
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            assert dev.owns(dst, count), "HtoD destination is not device memory"
        if kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            assert dev.owns(src, count), "DtoH source is not device memory"
        ctypes.memmove(dst, src, count)

    @call
    def cudaMemcpyAsync(dst, src, count, kind, stream):  # noqa: N802
        assert int(stream) in rt.streams
        if not (host.owns(dst, count) or host.owns(src, count)):
            return (cudaError_t.cudaErrorInvalidValue,)  # async copies need page-locked host memory
        _copy(dst, src, count, kind)
        return (ok,)

    @call
    def cudaMemcpy(dst, src, count, kind):  # noqa: N802
        _copy(dst, src, count, kind)
        return (ok,)

    return rt


# ---- pycuda.driver ---------------------------------------------------------------------------

def fake_pycuda(gpu: str = "Orin", cc=(8, 7), devices: int = 1) -> types.ModuleType:
    """pycuda.driver: init, Device, primary context, mem_alloc, pagelocked_empty, memcpy_*, Stream."""
    drv = types.ModuleType("pycuda.driver")
    mem = _Memory()
    drv.device_mem, drv.context_stack, drv.calls = mem, [], []

    class Error(Exception):
        pass

    class Context:
        def push(self):
            drv.context_stack.append(self)

        @staticmethod
        def pop():
            drv.context_stack.pop()

        def detach(self):
            drv.calls.append("detach")

    class Device:
        def __init__(self, n):
            if n >= devices:
                raise Error(f"cuDeviceGet failed: invalid device ordinal {n}")
            self.n = n

        def name(self):
            return gpu

        def compute_capability(self):
            return cc

        def retain_primary_context(self):
            return Context()

    class DeviceAllocation:
        def __init__(self, ptr):
            self.ptr = ptr

        def __int__(self):
            return self.ptr

        __index__ = __int__

        def free(self):
            mem.blocks.pop(self.ptr)

    class Stream:
        def __init__(self, flags=0):
            self.handle = 0x7000 + len(drv.calls)

        def synchronize(self):
            return self

    def mem_alloc(n):
        return DeviceAllocation(mem.new(n))

    def pagelocked_empty(shape, dtype, order="C", mem_flags=0):
        drv.calls.append("pagelocked_empty")
        return np.empty(shape, dtype, order=order)

    def memcpy_htod_async(dest, src, stream=None):
        assert isinstance(dest, int) and mem.owns(dest, src.nbytes) and isinstance(stream, Stream)
        ctypes.memmove(dest, src.ctypes.data, src.nbytes)

    def memcpy_dtoh_async(dest, src, stream=None):
        assert isinstance(src, int) and mem.owns(src, dest.nbytes) and isinstance(stream, Stream)
        ctypes.memmove(dest.ctypes.data, src, dest.nbytes)

    def memcpy_htod(dest, src):
        ctypes.memmove(dest, src.ctypes.data, src.nbytes)

    drv.Error, drv.Context, drv.Device, drv.Stream = Error, Context, Device, Stream
    drv.init = lambda flags=0: drv.calls.append("init")
    drv.mem_alloc, drv.pagelocked_empty = mem_alloc, pagelocked_empty
    drv.memcpy_htod_async, drv.memcpy_dtoh_async, drv.memcpy_htod = memcpy_htod_async, memcpy_dtoh_async, memcpy_htod
    return drv


# ---- torch -----------------------------------------------------------------------------------

class _Tensor:
    def __init__(self, array: np.ndarray, device: str = "cpu", pinned: bool = False):
        self.array, self.device, self.pinned = array, device, pinned

    def data_ptr(self) -> int:
        return self.array.ctypes.data

    def numpy(self) -> np.ndarray:
        assert self.device == "cpu"
        return self.array

    def __getitem__(self, sl):
        return _Tensor(self.array[sl], self.device, self.pinned)

    def copy_(self, src, non_blocking=False):
        assert src.device != self.device, "the provider only copies between host and device"
        assert not non_blocking or src.pinned or self.pinned, "non_blocking copies need pinned host memory"
        np.copyto(self.array, src.array)
        return self


def fake_torch(cuda: bool = True, gpu: str = "NVIDIA L4", cc=(8, 9)) -> types.ModuleType:
    torch = types.ModuleType("torch")
    torch.uint8 = np.uint8
    torch.current = []

    def empty(n, dtype=None, device=None, pin_memory=False):
        assert dtype is np.uint8
        return _Tensor(np.zeros(n, np.uint8), device or "cpu", pin_memory)

    class Stream:
        def __init__(self, device=None):
            self.cuda_stream = 0x9000

        def synchronize(self):
            pass

    @contextlib.contextmanager
    def stream(s):
        torch.current.append(s)
        yield
        torch.current.pop()

    torch.empty = empty
    torch.from_numpy = lambda a: _Tensor(a)
    torch.cuda = types.SimpleNamespace(is_available=lambda: cuda, set_device=lambda d: None, Stream=Stream,
                                       stream=stream, get_device_name=lambda d: gpu,
                                       get_device_capability=lambda d: cc)
    return torch


def importer_for(**modules):
    """An importer that knows only ``modules`` (dotted names) and records what was asked."""
    asked = []

    def imp(name):
        asked.append(name)
        if name in modules and modules[name] is not None:
            return modules[name]
        raise ImportError(f"No module named '{name}'")

    imp.asked = asked
    return imp


# ---- tests -----------------------------------------------------------------------------------

def test_cuda_check_unpacks_results_and_names_errors():
    ok = cudaError_t.cudaSuccess
    assert cm.cuda_check((ok, 42), "x") == 42
    assert cm.cuda_check((ok,), "x") is None
    assert cm.cuda_check((ok, 1, 2), "x") == (1, 2)
    assert cm.cuda_check(ok, "x") is None
    with pytest.raises(CloExportError, match=r"CUDA cudaMalloc\(8\) failed with cudaErrorMemoryAllocation \(2\): out of GPU"):
        cm.cuda_check((cudaError_t.cudaErrorMemoryAllocation, None), "cudaMalloc(8)")
    with pytest.raises(CloExportError, match="cudaErrorNoDevice.*nvidia-smi"):
        cm.cuda_check((cudaError_t.cudaErrorNoDevice,), "cudaSetDevice(0)")


def test_provider_order(monkeypatch):
    monkeypatch.delenv(cm.ENV, raising=False)
    assert cm.provider_order() == ("cuda-python", "pycuda", "torch")
    assert cm.provider_order("pycuda") == ("pycuda",)
    monkeypatch.setenv(cm.ENV, "Torch")
    assert cm.provider_order() == ("torch",)
    monkeypatch.setenv(cm.ENV, "cupy")
    with pytest.raises(CloExportError, match="CLO_EXPORT_CUDA='cupy' is not a device-buffer provider"):
        cm.provider_order()


@pytest.mark.parametrize("available, chosen, module", [
    (dict(bindings=True, cudart=True, pycuda=True, torch=True), "cuda-python", "cuda.bindings.runtime"),
    (dict(cudart=True, pycuda=True, torch=True), "cuda-python", "cuda.cudart"),
    (dict(pycuda=True, torch=True), "pycuda", "pycuda.driver"),
    (dict(torch=True), "torch", "torch"),
])
def test_selection_order(available, chosen, module, monkeypatch, caplog):
    monkeypatch.delenv(cm.ENV, raising=False)
    imp = importer_for(**{
        "cuda.bindings.runtime": fake_cudart() if available.get("bindings") else None,
        "cuda.cudart": fake_cudart("cuda.cudart") if available.get("cudart") else None,
        "pycuda.driver": fake_pycuda() if available.get("pycuda") else None,
        "torch": fake_torch() if available.get("torch") else None,
    })
    caplog.set_level("INFO", logger="clo_export")
    memory = cm.select_provider(importer=imp)
    assert memory.name == chosen and memory.module == module
    assert f"device buffers: {chosen} ({module})" in caplog.text
    if chosen != "torch":
        assert "torch" not in imp.asked  # torch is imported only when it is the provider


def test_no_provider_is_one_line_with_the_install_command(monkeypatch):
    monkeypatch.delenv(cm.ENV, raising=False)
    with pytest.raises(CloExportError) as e:
        cm.select_provider(importer=importer_for(torch=fake_torch(cuda=False)))
    msg = str(e.value)
    assert "\n" not in msg and "pip install cuda-python" in msg and "torch has no CUDA" in msg


def test_legacy_cudart_deprecation_warning_is_silenced(monkeypatch):
    monkeypatch.delenv(cm.ENV, raising=False)
    legacy = fake_cudart("cuda.cudart")

    def imp(name):
        if name == "cuda.cudart":
            warnings.warn("The cuda.cudart module is deprecated", FutureWarning, stacklevel=2)
            return legacy
        raise ImportError(name)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert cm.select_provider(importer=imp).rt is legacy


def test_bad_device_index_is_a_clear_error(monkeypatch):
    monkeypatch.delenv(cm.ENV, raising=False)
    with pytest.raises(CloExportError, match=r"cudaSetDevice\(3\).*cudaErrorInvalidDevice"):
        cm.select_provider(device=3, importer=importer_for(**{"cuda.bindings.runtime": fake_cudart()}))
    with pytest.raises(CloExportError, match="pycuda cannot open GPU 2"):
        cm.select_provider("pycuda", device=2, importer=importer_for(**{"pycuda.driver": fake_pycuda()}))


def _providers():
    rt, drv, torch = fake_cudart(), fake_pycuda(), fake_torch()
    return [(cm.CudaRuntimeMemory(rt, 0), rt), (cm.PyCudaMemory(drv, 0), drv), (cm.TorchMemory(torch, 0), torch)]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["cuda-python", "pycuda", "torch"])
def test_round_trip_through_pinned_buffers(index):
    memory, module = _providers()[index]
    data = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    stream = memory.create_stream()
    assert isinstance(memory.handle(stream), int)
    ptr = memory.alloc(64)
    host_in, host_out = memory.alloc_pinned(64), memory.alloc_pinned(64)
    assert host_in.dtype == np.uint8 and host_in.shape == (64,)
    view = host_in[: data.nbytes]
    view[...] = data.reshape(-1).view(np.uint8)
    memory.htod_async(ptr, view, stream)
    memory.dtoh_async(host_out[: data.nbytes], ptr, stream)
    memory.synchronize(stream)
    np.testing.assert_array_equal(host_out[: data.nbytes].view(np.float16).reshape(2, 3, 4), data)
    memory.copy_to(ptr, np.full(4, 7, np.int32))  # the calibrator's synchronous copy from pageable memory
    memory.dtoh_async(host_out[:16], ptr, stream)
    memory.synchronize(stream)
    assert host_out[:16].view(np.int32).tolist() == [7, 7, 7, 7]
    memory.free(ptr)
    memory.free_pinned(host_in)
    memory.destroy_stream(stream)
    memory.close()


def test_cuda_python_frees_and_reports_the_device():
    rt = fake_cudart(gpu=b"Orin", cc=(8, 7))
    memory = cm.CudaRuntimeMemory(rt, 0)
    assert memory.device_info() == ("Orin", (8, 7))  # NUL padding stripped
    ptr = memory.alloc(10)
    pinned = [memory.alloc_pinned(8), memory.alloc_pinned(8)]
    memory.free(ptr)
    memory.free_pinned(pinned[0])
    memory.close()  # frees what is left
    assert not rt.device_mem.blocks and not rt.pinned_mem.blocks
    assert rt.calls.count("cudaFreeHost") == 2


def test_cuda_python_errors_become_one_line():
    memory = cm.CudaRuntimeMemory(fake_cudart(fail={"cudaMalloc": cudaError_t.cudaErrorMemoryAllocation}), 0)
    with pytest.raises(CloExportError, match="out of GPU memory"):
        memory.alloc(1 << 40)


def test_pycuda_uses_the_primary_context_and_pops_it():
    drv = fake_pycuda()
    memory = cm.PyCudaMemory(drv, 0)
    assert len(drv.context_stack) == 1 and drv.calls[0] == "init"
    assert memory.device_info() == ("Orin", (8, 7))
    memory.alloc(16)
    memory.close()
    assert not drv.context_stack and "detach" in drv.calls and not drv.device_mem.blocks


def test_torch_copies_run_on_the_given_stream():
    torch = fake_torch()
    memory = cm.TorchMemory(torch, 0)
    seen = []
    stream = memory.create_stream()
    ptr, host = memory.alloc(8), memory.alloc_pinned(8)
    orig = _Tensor.copy_

    def spy(self, src, non_blocking=False):
        seen.append((torch.current[-1] if torch.current else None, non_blocking))
        return orig(self, src, non_blocking)

    _Tensor.copy_ = spy
    try:
        memory.htod_async(ptr, host, stream)
        memory.dtoh_async(host, ptr, stream)
    finally:
        _Tensor.copy_ = orig
    assert seen == [(stream, True), (stream, True)]
    assert memory.device_info() == ("NVIDIA L4", (8, 9))


def test_parse_nvidia_smi():
    text = "NVIDIA H100 80GB HBM3, 9.0\nNVIDIA A10, 8.6\n"
    assert cm.parse_nvidia_smi(text) == ("NVIDIA H100 80GB HBM3", (9, 0))
    assert cm.parse_nvidia_smi(text, 1) == ("NVIDIA A10", (8, 6))
    assert cm.parse_nvidia_smi(text, 2) is None
    assert cm.parse_nvidia_smi("NVIDIA X, [N/A]") is None


def test_gpu_identity_falls_back_to_nvidia_smi(monkeypatch):
    monkeypatch.delenv(cm.ENV, raising=False)
    monkeypatch.setattr(cm, "_nvidia_smi", lambda device: ("NVIDIA T4", (7, 5)))
    assert cm.gpu_identity(0, importer=importer_for()) == ("NVIDIA T4", (7, 5))
    assert cm.gpu_identity(0, importer=importer_for(**{"cuda.bindings.runtime": fake_cudart()}))[1] == (9, 0)
    monkeypatch.setattr(cm, "_nvidia_smi", lambda device: None)
    with pytest.raises(CloExportError, match="cannot identify GPU 0"):
        cm.gpu_identity(0, importer=importer_for())
