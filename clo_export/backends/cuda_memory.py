"""Device buffers for TensorRT inference through whichever CUDA binding is installed.

One small interface (:class:`DeviceMemory`: alloc/free, pinned host alloc, stream create/sync,
async host<->device copies, the GPU's name and compute capability) with three providers, tried
in this order by :func:`select_provider` and the choice logged:

1. cuda-python: ``cuda.bindings.runtime`` (cuda-bindings >= 12.6), falling back to the legacy
   ``cuda.cudart`` (cuda-python 11.x on JetPack 5; removed in cuda-bindings 13). Every call
   returns an ``(cudaError_t, value...)`` tuple, checked by :func:`cuda_check`.
2. pycuda (``pycuda.driver``): raises its own exceptions; uses the device's *primary* context,
   the one TensorRT and the CUDA runtime use, instead of ``pycuda.autoinit``'s private one.
3. torch CUDA tensors (``torch`` is imported only when it is the chosen provider).

``CLO_EXPORT_CUDA=cuda-python|pycuda|torch`` (or ``prefer=``) forces one. Nothing is imported
until a provider is selected. Device pointers are plain ints; streams are provider objects,
:meth:`DeviceMemory.handle` gives the ``cudaStream_t`` int TensorRT's ``execute_async_v3`` takes.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any, Protocol

import numpy as np

from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

PROVIDERS = ("cuda-python", "pycuda", "torch")
ENV = "CLO_EXPORT_CUDA"
INSTALL_HINT = ("pip install cuda-python (JetPack 5 / CUDA 11: pip install 'cuda-python<12'), "
                "or pycuda, or torch with CUDA")
# cudaError_t names that deserve a fix, not just a code
CUDA_HINTS = {
    "cudaErrorNoDevice": "no NVIDIA GPU is visible (check nvidia-smi and CUDA_VISIBLE_DEVICES)",
    "cudaErrorInsufficientDriver": "the NVIDIA driver is older than this CUDA runtime; update the driver",
    "cudaErrorInvalidDevice": "that GPU index does not exist here; pass a smaller device index",
    "cudaErrorMemoryAllocation": "out of GPU memory; use a smaller batch or free the GPU",
}

Importer = Callable[[str], ModuleType]


class DeviceMemory(Protocol):
    """What the TensorRT runner (and the implicit INT8 calibrator) need from a CUDA binding."""

    name: str

    def alloc(self, nbytes: int) -> int: ...

    def free(self, ptr: int) -> None: ...

    def alloc_pinned(self, nbytes: int) -> np.ndarray: ...  # 1-D uint8, page-locked

    def free_pinned(self, array: np.ndarray) -> None: ...

    def create_stream(self) -> Any: ...

    def handle(self, stream: Any) -> int: ...

    def destroy_stream(self, stream: Any) -> None: ...

    def htod_async(self, ptr: int, host: np.ndarray, stream: Any) -> None: ...

    def dtoh_async(self, host: np.ndarray, ptr: int, stream: Any) -> None: ...

    def synchronize(self, stream: Any) -> None: ...

    def copy_to(self, ptr: int, array: np.ndarray) -> None: ...  # synchronous, pageable source (calibrator)

    def device_info(self) -> tuple[str, tuple[int, int]]: ...

    def close(self) -> None: ...


def cuda_check(result: Any, call: str) -> Any:
    """Unpack a cuda-python ``(cudaError_t, value...)`` result; a non-success code becomes CloExportError."""
    err, *rest = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        name = getattr(err, "name", None) or str(err)
        hint = CUDA_HINTS.get(name, "rerun with --debug for the traceback")
        raise CloExportError(f"CUDA {call} failed with {name} ({int(err)}): {hint}")
    if not rest:
        return None
    return rest[0] if len(rest) == 1 else tuple(rest)


def host_view(ptr: int, nbytes: int) -> np.ndarray:
    """A 1-D uint8 numpy array over ``nbytes`` of host memory at address ``ptr`` (not owned)."""
    return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctypes.c_uint8)), (nbytes,))


def _contiguous(host: np.ndarray) -> np.ndarray:
    if not host.flags.c_contiguous:
        raise CloExportError("internal: host buffers handed to the GPU must be C-contiguous")
    return host


class CudaRuntimeMemory:
    """cuda-python's runtime API (``cuda.bindings.runtime`` or legacy ``cuda.cudart``)."""

    name = "cuda-python"

    def __init__(self, rt: ModuleType, device: int = 0):
        self.rt = rt
        self.device = int(device)
        self.module = rt.__name__
        self._pinned: dict[int, int] = {}  # host address -> nbytes
        cuda_check(rt.cudaSetDevice(self.device), f"cudaSetDevice({self.device})")

    def alloc(self, nbytes: int) -> int:
        return int(cuda_check(self.rt.cudaMalloc(int(nbytes)), f"cudaMalloc({nbytes})"))

    def free(self, ptr: int) -> None:
        cuda_check(self.rt.cudaFree(ptr), "cudaFree")

    def alloc_pinned(self, nbytes: int) -> np.ndarray:
        ptr = int(cuda_check(self.rt.cudaMallocHost(int(nbytes)), f"cudaMallocHost({nbytes})"))
        self._pinned[ptr] = int(nbytes)
        return host_view(ptr, int(nbytes))

    def free_pinned(self, array: np.ndarray) -> None:
        ptr = array.ctypes.data
        if self._pinned.pop(ptr, None) is not None:
            cuda_check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")

    def create_stream(self) -> Any:
        return cuda_check(self.rt.cudaStreamCreate(), "cudaStreamCreate")

    def handle(self, stream: Any) -> int:
        return int(stream)

    def destroy_stream(self, stream: Any) -> None:
        cuda_check(self.rt.cudaStreamDestroy(stream), "cudaStreamDestroy")

    def htod_async(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        host = _contiguous(host)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_check(self.rt.cudaMemcpyAsync(ptr, host.ctypes.data, host.nbytes, kind, stream), "cudaMemcpyAsync(HtoD)")

    def dtoh_async(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        host = _contiguous(host)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        cuda_check(self.rt.cudaMemcpyAsync(host.ctypes.data, ptr, host.nbytes, kind, stream), "cudaMemcpyAsync(DtoH)")

    def synchronize(self, stream: Any) -> None:
        cuda_check(self.rt.cudaStreamSynchronize(stream), "cudaStreamSynchronize")

    def copy_to(self, ptr: int, array: np.ndarray) -> None:
        array = np.ascontiguousarray(array)
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        cuda_check(self.rt.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, kind), "cudaMemcpy(HtoD)")

    def device_info(self) -> tuple[str, tuple[int, int]]:
        prop = cuda_check(self.rt.cudaGetDeviceProperties(self.device), "cudaGetDeviceProperties")
        return _text(prop.name), (int(prop.major), int(prop.minor))

    def close(self) -> None:
        for ptr in list(self._pinned):
            self._pinned.pop(ptr)
            cuda_check(self.rt.cudaFreeHost(ptr), "cudaFreeHost")


class PyCudaMemory:
    """pycuda's driver API on the device's primary context (shared with TensorRT)."""

    name = "pycuda"

    def __init__(self, driver: ModuleType, device: int = 0):
        self.drv = driver
        self.device = int(device)
        self.module = driver.__name__
        self._allocs: dict[int, Any] = {}  # device pointer -> DeviceAllocation
        self._pinned: dict[int, np.ndarray] = {}
        try:
            driver.init()
            self.dev = driver.Device(self.device)
            self.ctx = self.dev.retain_primary_context()
            self.ctx.push()
        except driver.Error as e:
            raise CloExportError(f"pycuda cannot open GPU {self.device}: {e}; check nvidia-smi") from e

    def _guard(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except self.drv.Error as e:
            raise CloExportError(f"pycuda {what} failed: {e}") from e

    def alloc(self, nbytes: int) -> int:
        allocation = self._guard(f"mem_alloc({nbytes})", lambda: self.drv.mem_alloc(int(nbytes)))
        self._allocs[int(allocation)] = allocation
        return int(allocation)

    def free(self, ptr: int) -> None:
        allocation = self._allocs.pop(int(ptr), None)
        if allocation is not None:
            self._guard("free", allocation.free)

    def alloc_pinned(self, nbytes: int) -> np.ndarray:
        array = self._guard(f"pagelocked_empty({nbytes})", lambda: self.drv.pagelocked_empty(int(nbytes), np.uint8))
        self._pinned[array.ctypes.data] = array
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        self._pinned.pop(array.ctypes.data, None)  # freed with the last reference

    def create_stream(self) -> Any:
        return self._guard("Stream()", self.drv.Stream)

    def handle(self, stream: Any) -> int:
        return int(stream.handle)

    def destroy_stream(self, stream: Any) -> None:
        pass  # a pycuda Stream is destroyed with the object

    def htod_async(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        self._guard("memcpy_htod_async", lambda: self.drv.memcpy_htod_async(ptr, _contiguous(host), stream))

    def dtoh_async(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        self._guard("memcpy_dtoh_async", lambda: self.drv.memcpy_dtoh_async(_contiguous(host), ptr, stream))

    def synchronize(self, stream: Any) -> None:
        self._guard("Stream.synchronize", stream.synchronize)

    def copy_to(self, ptr: int, array: np.ndarray) -> None:
        self._guard("memcpy_htod", lambda: self.drv.memcpy_htod(ptr, np.ascontiguousarray(array)))

    def device_info(self) -> tuple[str, tuple[int, int]]:
        major, minor = self.dev.compute_capability()
        return _text(self.dev.name()), (int(major), int(minor))

    def close(self) -> None:
        for ptr in list(self._allocs):
            self.free(ptr)
        self._pinned.clear()
        self.drv.Context.pop()
        self.ctx.detach()


class TorchMemory:
    """torch CUDA tensors as device buffers and pinned CPU tensors as host buffers."""

    name = "torch"

    def __init__(self, torch: ModuleType, device: int = 0):
        self.torch = torch
        self.device = int(device)
        self.module = torch.__name__
        self._dev: dict[int, Any] = {}  # data_ptr -> uint8 CUDA tensor
        self._pinned: dict[int, Any] = {}  # host address -> pinned uint8 CPU tensor
        torch.cuda.set_device(self.device)

    def alloc(self, nbytes: int) -> int:
        t = self.torch.empty(int(nbytes), dtype=self.torch.uint8, device=f"cuda:{self.device}")
        self._dev[t.data_ptr()] = t
        return t.data_ptr()

    def free(self, ptr: int) -> None:
        self._dev.pop(int(ptr), None)

    def alloc_pinned(self, nbytes: int) -> np.ndarray:
        t = self.torch.empty(int(nbytes), dtype=self.torch.uint8, pin_memory=True)
        array = t.numpy()
        self._pinned[array.ctypes.data] = t
        return array

    def free_pinned(self, array: np.ndarray) -> None:
        self._pinned.pop(array.ctypes.data, None)

    def _host_tensor(self, host: np.ndarray) -> Any:
        """The pinned tensor behind ``host`` (a prefix view of one), else a tensor sharing its memory."""
        flat = _contiguous(host).reshape(-1).view(np.uint8)
        pinned = self._pinned.get(flat.ctypes.data)
        return pinned[: flat.nbytes] if pinned is not None else self.torch.from_numpy(flat)

    def _device_tensor(self, ptr: int, nbytes: int) -> Any:
        t = self._dev.get(int(ptr))
        if t is None:
            raise CloExportError("internal: torch provider got a device pointer it did not allocate")
        return t[:nbytes]

    def create_stream(self) -> Any:
        return self.torch.cuda.Stream(device=self.device)

    def handle(self, stream: Any) -> int:
        return int(stream.cuda_stream)

    def destroy_stream(self, stream: Any) -> None:
        pass

    def htod_async(self, ptr: int, host: np.ndarray, stream: Any) -> None:
        src = self._host_tensor(host)
        with self.torch.cuda.stream(stream):
            self._device_tensor(ptr, host.nbytes).copy_(src, non_blocking=True)

    def dtoh_async(self, host: np.ndarray, ptr: int, stream: Any) -> None:
        dst = self._host_tensor(host)
        with self.torch.cuda.stream(stream):
            dst.copy_(self._device_tensor(ptr, host.nbytes), non_blocking=True)

    def synchronize(self, stream: Any) -> None:
        stream.synchronize()

    def copy_to(self, ptr: int, array: np.ndarray) -> None:
        flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
        self._device_tensor(ptr, flat.nbytes).copy_(self.torch.from_numpy(flat))

    def device_info(self) -> tuple[str, tuple[int, int]]:
        major, minor = self.torch.cuda.get_device_capability(self.device)
        return str(self.torch.cuda.get_device_name(self.device)), (int(major), int(minor))

    def close(self) -> None:
        self._dev.clear()
        self._pinned.clear()


def _text(value: Any) -> str:
    """A device name from bytes (cuda-python's char[256], NUL padded) or str."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).split(b"\0", 1)[0].decode("utf-8", "replace")
    return str(value).strip()


def _import_cuda_python(importer: Importer) -> ModuleType | None:
    """cuda.bindings.runtime, else the legacy cuda.cudart (its deprecation warning silenced)."""
    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                return importer(name)
        except ImportError:
            continue
    return None


def find_provider(name: str, importer: Importer = importlib.import_module) -> tuple[ModuleType | None, str]:
    """(module, "") when provider ``name`` is usable here, else (None, why not)."""
    if name == "cuda-python":
        module = _import_cuda_python(importer)
        return (module, "") if module else (None, "cuda-python is not installed")
    if name == "pycuda":
        try:
            return importer("pycuda.driver"), ""
        except ImportError as e:
            return None, f"pycuda is not importable ({e})"
    if name == "torch":
        try:
            torch = importer("torch")
        except ImportError:
            return None, "torch is not installed"
        if not torch.cuda.is_available():
            return None, "torch has no CUDA (a CPU build, or no GPU)"
        return torch, ""
    raise CloExportError(f"unknown device-buffer provider {name!r}; use one of {', '.join(PROVIDERS)} (or unset {ENV})")


FACTORIES: dict[str, Callable[[ModuleType, int], DeviceMemory]] = {
    "cuda-python": CudaRuntimeMemory,
    "pycuda": PyCudaMemory,
    "torch": TorchMemory,
}


def provider_order(prefer: str | None = None) -> tuple[str, ...]:
    """The providers to try: the one asked for (argument, then $CLO_EXPORT_CUDA), else all in order."""
    choice = (prefer or os.environ.get(ENV) or "auto").strip().lower()
    if choice == "auto":
        return PROVIDERS
    if choice not in PROVIDERS:
        raise CloExportError(f"{ENV}={choice!r} is not a device-buffer provider; use one of {', '.join(PROVIDERS)} or auto")
    return (choice,)


def select_provider(prefer: str | None = None, device: int = 0,
                    importer: Importer = importlib.import_module) -> DeviceMemory:
    """Open the first usable provider on ``device`` (see the module docstring); the choice is logged."""
    reasons = []
    for name in provider_order(prefer):
        module, why = find_provider(name, importer)
        if module is None:
            reasons.append(why)
            continue
        memory = FACTORIES[name](module, device)
        log.info("device buffers: %s (%s) on cuda:%d", name, module.__name__, device)
        return memory
    raise CloExportError(f"TensorRT inference needs a CUDA binding for device buffers ({'; '.join(reasons)}): "
                         f"{INSTALL_HINT}")


def gpu_identity(device: int = 0, prefer: str | None = None,
                 importer: Importer = importlib.import_module) -> tuple[str, tuple[int, int]]:
    """(GPU name, compute capability) of ``device`` through a provider, else nvidia-smi."""
    try:
        memory = select_provider(prefer, device, importer)
    except CloExportError as e:
        found = _nvidia_smi(device)
        if found is None:
            raise CloExportError(f"cannot identify GPU {device} for the engine sidecar: {e}") from e
        return found
    try:
        return memory.device_info()
    finally:
        memory.close()


def parse_nvidia_smi(text: str, device: int = 0) -> tuple[str, tuple[int, int]] | None:
    """Parse ``nvidia-smi --query-gpu=name,compute_cap --format=csv,noheader`` output for one GPU."""
    rows = [line.rsplit(",", 1) for line in text.strip().splitlines() if "," in line]
    if device >= len(rows):
        return None
    name, cap = (s.strip() for s in rows[device])
    try:
        major, minor = (int(x) for x in cap.split("."))
    except ValueError:
        return None
    return name, (major, minor)


def _nvidia_smi(device: int) -> tuple[str, tuple[int, int]] | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return None
    return parse_nvidia_smi(out.stdout, device) if out.returncode == 0 else None
