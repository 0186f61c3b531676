"""TensorRT implicit INT8 calibrators (TensorRT < 11, DLA on JetPack 5) over the calibration feeds.

Everything but the base class is plain code: :class:`CalibratorCore` walks the same
``{input_name: array}`` iterable the Q/DQ quantizer uses, copies each batch to device memory
through a small :class:`DeviceMemory` interface, and reads/writes TensorRT's calibration cache.
:func:`make_calibrator` binds it to ``trt.IInt8EntropyCalibrator2`` / ``trt.IInt8MinMaxCalibrator``
(``clo_export.engine.plan.CALIBRATOR_CLASSES``), importing TensorRT only then.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from clo_export.engine.plan import CALIBRATOR_CLASSES
from clo_export.errors import CloExportError
from clo_export.fileio import atomic_path
from clo_export.lazy import lazy_import

log = logging.getLogger(__name__)

# first line of TensorRT's cache: "TRT-<version>-EntropyCalibration2" / "TRT-<version>-MinMaxCalibration"
CACHE_ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}


class DeviceMemory(Protocol):
    """Where calibration batches go: allocate once per input, copy each batch, free at the end."""

    def alloc(self, nbytes: int) -> int: ...

    def copy_to(self, ptr: int, array: np.ndarray) -> None: ...

    def free(self, ptr: int) -> None: ...


class CalibratorCore:
    """get_batch / cache logic for TensorRT's calibrator interface, independent of TensorRT."""

    def __init__(self, data: Iterable[dict[str, np.ndarray]], method: str = "entropy",
                 cache_path: str | os.PathLike | None = None, device: DeviceMemory | None = None):
        if method not in CALIBRATOR_CLASSES:
            raise CloExportError(f"unknown calibrator {method!r}; use {', '.join(CALIBRATOR_CLASSES)}")
        self.data = data
        self.method = method
        self.cache_path = Path(cache_path) if cache_path else None
        self.device = device
        self._it: Iterator[dict[str, np.ndarray]] | None = None
        self._first: dict[str, np.ndarray] | None = None
        self._ptrs: dict[str, tuple[int, int]] = {}  # name -> (ptr, nbytes)
        self.batches = 0

    def _peek(self) -> dict[str, np.ndarray] | None:
        if self._it is None:
            self._it = iter(self.data)
            self._first = next(self._it, None)
        return self._first

    @property
    def batch_size(self) -> int:
        """Batch dimension of the feeds (TensorRT asks before the first get_batch)."""
        first = self._peek()
        return int(next(iter(first.values())).shape[0]) if first else 1

    def get_batch(self, names: list[str]) -> list[int] | None:
        """Device pointers of the next batch, in ``names`` order; None when the data is exhausted."""
        self._peek()
        feed, self._first = (self._first, None) if self._first is not None else (next(self._it, None), None)
        if feed is None:
            return None
        if self.device is None:
            self.device = default_device()
        missing = [n for n in names if n not in feed]
        if missing:
            raise CloExportError(f"calibration feed has {sorted(feed)}, TensorRT asks for {missing}; "
                                 "the ONNX input names must match (images)")
        ptrs = []
        for name in names:
            arr = np.ascontiguousarray(feed[name], dtype=np.float32)
            ptr, size = self._ptrs.get(name, (0, 0))
            if size < arr.nbytes:
                if ptr:
                    self.device.free(ptr)
                ptr, size = self.device.alloc(arr.nbytes), arr.nbytes
                self._ptrs[name] = (ptr, size)
            self.device.copy_to(ptr, arr)
            ptrs.append(int(ptr))
        self.batches += 1
        return ptrs

    def read_cache(self) -> bytes | None:
        """TensorRT's cache if present and made by the same algorithm (else None: calibrate)."""
        if self.cache_path is None or not self.cache_path.is_file():
            return None
        data = self.cache_path.read_bytes()
        header = data.split(b"\n", 1)[0].decode("ascii", "replace")
        want = CACHE_ALGORITHMS[self.method]
        if not header.endswith(want):
            log.warning("TensorRT calibration cache %s was made by %s, not %s; ignoring it and recalibrating",
                        self.cache_path, header or "an unknown calibrator", want)
            return None
        log.info("TensorRT calibration cache hit: %s", self.cache_path)
        return data

    def write_cache(self, cache: Any) -> None:
        """Write TensorRT's cache atomically (it hands a buffer-like object)."""
        if self.cache_path is None:
            return
        with atomic_path(self.cache_path) as tmp:
            tmp.write_bytes(bytes(memoryview(cache)))

    def close(self) -> None:
        """Free device buffers."""
        for ptr, _ in self._ptrs.values():
            if ptr and self.device is not None:
                self.device.free(ptr)
        self._ptrs.clear()


def make_calibrator(data: Iterable[dict[str, np.ndarray]], method: str = "entropy",
                    cache_path: str | os.PathLike | None = None, device: DeviceMemory | None = None) -> Any:
    """A ``trt.IInt8EntropyCalibrator2`` / ``trt.IInt8MinMaxCalibrator`` over ``data`` (for engine.build_engine)."""
    core = CalibratorCore(data, method, cache_path, device)
    trt = lazy_import("tensorrt")
    cls_name = CALIBRATOR_CLASSES[method]
    base = getattr(trt, cls_name, None)
    if base is None:
        raise CloExportError(f"TensorRT {getattr(trt, '__version__', '?')} has no {cls_name} (removed in 11); "
                             "use the Q/DQ model from clo-export quantize")

    class Calibrator(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self.core = core

        def get_batch_size(self) -> int:
            return self.core.batch_size

        def get_batch(self, names: list[str], *_: Any) -> list[int] | None:
            return self.core.get_batch(list(names))

        def read_calibration_cache(self, *_: Any) -> bytes | None:
            return self.core.read_cache()

        def write_calibration_cache(self, cache: Any, *_: Any) -> None:
            self.core.write_cache(cache)

    Calibrator.__name__ = Calibrator.__qualname__ = f"Clo{cls_name}"
    return Calibrator()


class _TorchDevice:
    """Device buffers as torch CUDA tensors (where torch with CUDA is installed)."""

    def __init__(self, torch: Any):
        self.torch = torch
        self.buffers: dict[int, Any] = {}

    def alloc(self, nbytes: int) -> int:
        t = self.torch.empty(nbytes, dtype=self.torch.uint8, device="cuda")
        self.buffers[t.data_ptr()] = t
        return t.data_ptr()

    def copy_to(self, ptr: int, array: np.ndarray) -> None:
        self.buffers[ptr][: array.nbytes].copy_(self.torch.from_numpy(array.view(np.uint8).reshape(-1)))

    def free(self, ptr: int) -> None:
        self.buffers.pop(ptr, None)


class _CudaRuntimeDevice:
    """Device buffers through cuda-python (cuda.bindings.runtime, or the legacy cuda.cudart)."""

    def __init__(self, rt: Any):
        self.rt = rt

    def _check(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise CloExportError(f"CUDA runtime error {err} while feeding the TensorRT calibrator")
        return rest[0] if rest else None

    def alloc(self, nbytes: int) -> int:
        return int(self._check(self.rt.cudaMalloc(nbytes)))

    def copy_to(self, ptr: int, array: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(self.rt.cudaMemcpy(ptr, array.ctypes.data, array.nbytes, kind))

    def free(self, ptr: int) -> None:
        self._check(self.rt.cudaFree(ptr))


def default_device() -> DeviceMemory:
    """cuda-python, else torch with CUDA; a one-line error naming the install otherwise."""
    import importlib

    for name in ("cuda.bindings.runtime", "cuda.cudart"):
        try:
            return _CudaRuntimeDevice(importlib.import_module(name))
        except ImportError:
            continue
    try:
        import torch

        if torch.cuda.is_available():
            return _TorchDevice(torch)
    except ImportError:
        pass
    raise CloExportError("the TensorRT calibrator needs device memory: pip install cuda-python (or torch with CUDA)")
