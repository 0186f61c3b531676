"""TensorRT runner over the named-tensor API (TensorRT 8.5 … 11.x), on its own CUDA stream.

Only names that exist in every supported release are used (tests/test_trt_api.py checks them
against the committed per-version API lists): ``Runtime.deserialize_cuda_engine``,
``num_io_tensors``, ``get_tensor_name/mode/dtype/shape``, ``get_tensor_profile_shape``,
``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``. The bindings API
(``execute_async_v2``, ``get_binding_*``), removed in 10, is never touched.

Convention for that check: TensorRT objects live in variables named ``trt``, ``runtime``,
``engine``, ``context`` (or ``self._runtime/_engine/_context``); nothing else here holds one.

Activation reads the engine's sidecar (``ENGINE.json``) and refuses a TensorRT version or GPU
architecture that cannot load it, before TensorRT is asked; TensorRT's own "version tag" /
"magic tag" / serialization errors become the same one-line rebuild hint. Nothing is imported
or allocated before :meth:`TensorRTRunner.activate`; torch is imported only when it is the
device-buffer provider (:mod:`clo_export.backends.cuda_memory`).
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from clo_export.backends.base import Runner, TensorSpec
from clo_export.engine.sidecar import EngineSidecar, check_compatible, sidecar_path
from clo_export.errors import CloExportError
from clo_export.lazy import lazy_import

log = logging.getLogger(__name__)

# trt.DataType member name -> numpy dtype (BF16/FP8/INT4 have no numpy type: refused with a hint)
DTYPES: dict[str, np.dtype] = {
    "FLOAT": np.dtype(np.float32), "HALF": np.dtype(np.float16), "INT8": np.dtype(np.int8),
    "INT32": np.dtype(np.int32), "INT64": np.dtype(np.int64), "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
}
SERIALIZATION_WORDS = ("version tag", "magic tag", "serialization", "serialized engine")
_PRECISION_FLAG = {"fp32": "", "fp16": " --fp16", "int8": " --int8"}


def numpy_dtype(trt_dtype: Any) -> np.dtype:
    """The numpy dtype of a ``trt.DataType`` member (or its name)."""
    name = trt_dtype if isinstance(trt_dtype, str) else getattr(trt_dtype, "name", str(trt_dtype))
    name = str(name).rsplit(".", 1)[-1].upper()
    if name not in DTYPES:
        raise CloExportError(f"engine I/O type {name} has no numpy equivalent; rebuild the engine from an ONNX with "
                             "float32/float16/int8/int32 inputs and outputs (clo-export onnx)")
    return DTYPES[name]


@dataclass(frozen=True)
class IOTensor:
    """One engine input or output: name, numpy dtype, declared shape (-1 = dynamic), profile 0 range."""

    name: str
    is_input: bool
    dtype: np.dtype
    shape: tuple[int, ...]
    profile: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None  # (min, opt, max)

    @property
    def dynamic(self) -> bool:
        return any(d < 0 for d in self.shape)


def read_io(trt: Any, engine: Any) -> list[IOTensor]:
    """Every I/O tensor of ``engine`` in engine order, with profile 0's range for dynamic inputs."""
    out = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        is_input = engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
        shape = tuple(int(d) for d in engine.get_tensor_shape(name))
        profile = None
        if is_input and any(d < 0 for d in shape):
            lo, opt, hi = engine.get_tensor_profile_shape(name, 0)
            profile = tuple(tuple(int(d) for d in s) for s in (lo, opt, hi))
        out.append(IOTensor(name, is_input, numpy_dtype(engine.get_tensor_dtype(name)), shape, profile))
    return out


def prepare_input(spec: IOTensor, array: Any) -> np.ndarray:
    """``array`` as a C-contiguous array of the engine's dtype and a shape the engine accepts."""
    array = np.asarray(array)
    if array.dtype != spec.dtype:
        if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise CloExportError(f"input '{spec.name}' is {array.dtype} but the engine takes {spec.dtype}; "
                                 f"feed {spec.dtype} data (an INT8-I/O engine needs already quantized input)")
        array = array.astype(spec.dtype)
    array = np.ascontiguousarray(array)
    if len(array.shape) != len(spec.shape) or any(d >= 0 and d != a for d, a in zip(spec.shape, array.shape)):
        want = "x".join("?" if d < 0 else str(d) for d in spec.shape)
        raise CloExportError(f"input '{spec.name}' has shape {tuple(array.shape)} but the engine takes {want}; "
                             "rebuild it for this size, or with --batch-range for other batch sizes")
    if spec.profile is not None:
        lo, _, hi = spec.profile
        if any(not lo_d <= a <= hi_d for lo_d, a, hi_d in zip(lo, array.shape, hi)):
            raise CloExportError(f"input '{spec.name}' has shape {tuple(array.shape)}, outside the engine's profile "
                                 f"{lo} … {hi}; rebuild with clo-export trt --batch-range MIN,OPT,MAX covering it")
    return array


def rebuild_command(side: EngineSidecar | None) -> str:
    """The command that makes this engine again, from its sidecar when there is one."""
    if side is None:
        return "clo-export trt MODEL.onnx"
    return f"clo-export trt {side.source_onnx}{_PRECISION_FLAG.get(side.precision, '')}"


def deserialize_error(path: str | os.PathLike, messages: list[str], running: str,
                      side: EngineSidecar | None) -> CloExportError:
    """One line for a failed deserialization; TensorRT's version/magic-tag errors mean 'rebuild here'."""
    detail = next((m for m in messages if any(w in m.lower() for w in SERIALIZATION_WORDS)), None)
    fix = f"rebuild it on this device with: {rebuild_command(side)}"
    if detail is not None:
        built = f" (built with TensorRT {side.tensorrt_version} on {side.gpu_name})" if side else ""
        return CloExportError(f"'{Path(path).name}' is not an engine this TensorRT {running} can load{built}: "
                              f"{_one_line(detail)}; {fix}")
    first = _one_line(messages[0]) if messages else "no details from TensorRT"
    return CloExportError(f"TensorRT {running} could not load '{Path(path).name}' ({first}); {fix}")


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def device_index(device: int | str | None) -> int:
    """0, 1, "cuda", "cuda:1" -> the CUDA device index."""
    if device is None or device == "cuda":
        return 0
    if isinstance(device, int):
        return device
    text = str(device)
    tail = text.split(":", 1)[1] if text.startswith("cuda:") else text
    if not tail.isdigit():
        raise CloExportError(f"device '{device}' is not a GPU; TensorRT engines run on cuda or cuda:N")
    return int(tail)


class _Capture(logging.Handler):
    """Collects what TensorRT logs at WARNING and above while an engine is deserialized."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _deserialize(trt: Any, path: Path, side: EngineSidecar | None) -> tuple[Any, Any, Any]:
    """(logger, runtime, engine) for ``path``; the logger and runtime must outlive the engine."""
    from clo_export.engine.build import TRT_LOG, make_logger

    data = path.read_bytes()
    logger = make_logger(trt, "warning")
    capture = _Capture()
    TRT_LOG.addHandler(capture)
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(data)
    except Exception as e:  # some releases raise instead of returning None
        capture.messages.append(str(e))
        engine = None
    finally:
        TRT_LOG.removeHandler(capture)
    if engine is None:
        raise deserialize_error(path, capture.messages, str(trt.__version__), side)
    return logger, runtime, engine


def engine_layer_count(path: str | os.PathLike) -> int:
    """Layers of a built engine after TensorRT's fusions (needs TensorRT and the GPU that built it)."""
    trt = lazy_import("tensorrt")
    _logger, _runtime, engine = _deserialize(trt, Path(path), None)
    return int(engine.num_layers)


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine: pinned host buffers, device buffers, one CUDA stream.

    ``buffers`` picks the device-buffer provider (None: $CLO_EXPORT_CUDA, else the first of
    cuda-python, pycuda, torch that is installed). ``require_sidecar=False`` also loads engines
    made by other tools (trtexec), without the version/GPU check. Outputs come back in the engine's
    dtypes (float16 for an FP16-I/O engine), as fresh arrays.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, device: int | str = 0, buffers: str | None = None,
                 require_sidecar: bool = True):
        super().__init__()
        self.path = Path(engine_path)
        self.device = device_index(device)
        self.buffers = buffers
        self.require_sidecar = require_sidecar
        self.sidecar: EngineSidecar | None = None
        self.warnings: list[str] = []
        self.memory = None
        self._reset()

    def _reset(self) -> None:
        self._logger = self._runtime = self._engine = self._context = self._stream = None
        self._io: list[IOTensor] = []
        self._host: dict[str, np.ndarray] = {}
        self._dev: dict[str, tuple[int, int]] = {}  # name -> (pointer, capacity)

    # ---- activate / deactivate -------------------------------------------------------------

    def activate_impl(self) -> None:
        if not self.path.is_file():
            raise CloExportError(f"engine '{self.path}' does not exist; build one with: clo-export trt MODEL.onnx")
        if self.require_sidecar or sidecar_path(self.path).is_file():
            self.sidecar = EngineSidecar.read(self.path)
        trt = lazy_import("tensorrt")
        from clo_export.backends.cuda_memory import select_provider

        self.memory = select_provider(self.buffers, self.device)
        try:
            self._open(trt)
        except BaseException:
            self.deactivate_impl()
            raise

    def _open(self, trt: Any) -> None:
        gpu, capability = self.memory.device_info()
        if self.sidecar is not None:
            self.warnings = check_compatible(self.sidecar, str(trt.__version__), gpu, capability)
            for w in self.warnings:
                log.warning(w)
        self._logger, self._runtime, self._engine = _deserialize(trt, self.path, self.sidecar)
        engine = self._engine
        self._context = engine.create_execution_context()
        if self._context is None:
            raise CloExportError(f"TensorRT could not create an execution context for '{self.path.name}' "
                                 "(out of GPU memory?); free the GPU or rebuild with a smaller --batch-range")
        self._io = read_io(trt, engine)
        self._stream = self.memory.create_stream()
        for spec in self._io:  # static tensors get their buffers now, dynamic ones on first use
            if not spec.dynamic:
                self._buffer(spec.name, _nbytes(spec.shape, spec.dtype))
        log.debug("TensorRT %s engine %s on %s sm_%d%d: %s", trt.__version__, self.path.name, gpu, *capability,
                  ", ".join(f"{'in' if s.is_input else 'out'} {s.name} {s.dtype} {s.shape}" for s in self._io))

    def deactivate_impl(self) -> None:
        memory = self.memory
        if memory is not None:
            if self._stream is not None:
                memory.synchronize(self._stream)
            for ptr, _ in self._dev.values():
                memory.free(ptr)
            for host in self._host.values():
                memory.free_pinned(host)
            if self._stream is not None:
                memory.destroy_stream(self._stream)
        # TensorRT objects go in dependency order: context, engine, runtime, logger
        self._context = None
        self._engine = None
        self._runtime = None
        if memory is not None:
            memory.close()
        self.memory = None
        self._reset()

    # ---- inference -------------------------------------------------------------------------

    @property
    def io(self) -> list[IOTensor]:
        """The engine's inputs and outputs (after activate)."""
        return list(self._io)

    def input_specs_impl(self) -> list[TensorSpec]:
        return [TensorSpec(s.name, tuple(None if d < 0 else d for d in s.shape), s.dtype) for s in self._io if s.is_input]

    def _buffer(self, name: str, nbytes: int) -> tuple[np.ndarray, int]:
        """(pinned host uint8 view of nbytes, device pointer), grown when a larger shape arrives."""
        need = max(int(nbytes), 1)
        ptr, capacity = self._dev.get(name, (0, 0))
        if capacity < need:
            if ptr:
                self.memory.free(ptr)
                self.memory.free_pinned(self._host.pop(name))
            ptr = self.memory.alloc(need)
            self._dev[name] = (ptr, need)
            self._host[name] = self.memory.alloc_pinned(need)
        return self._host[name][: int(nbytes)], ptr

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        context, memory, stream = self._context, self.memory, self._stream
        inputs = [s for s in self._io if s.is_input]
        names = {s.name for s in inputs}
        missing, extra = sorted(names - set(feed)), sorted(set(feed) - names)
        if missing or extra:
            raise CloExportError(f"the engine takes inputs {sorted(names)}; got {sorted(feed)}"
                                 f"{' (missing ' + ', '.join(missing) + ')' if missing else ''}")
        for spec in inputs:
            array = prepare_input(spec, feed[spec.name])
            if spec.dynamic and not context.set_input_shape(spec.name, array.shape):
                raise CloExportError(f"TensorRT refused shape {array.shape} for input '{spec.name}' "
                                     f"(profile {spec.profile}); rebuild with a --batch-range that covers it")
            host, ptr = self._buffer(spec.name, array.nbytes)
            host[...] = array.reshape(-1).view(np.uint8)
            memory.htod_async(ptr, host, stream)
            context.set_tensor_address(spec.name, ptr)
        pending = []
        for spec in (s for s in self._io if not s.is_input):
            shape = tuple(int(d) for d in context.get_tensor_shape(spec.name))
            if any(d < 0 for d in shape):
                raise CloExportError(f"output '{spec.name}' has a data-dependent shape {shape}; export the ONNX with "
                                     "fixed-size outputs (clo-export onnx --nms pads to --max-det)")
            host, ptr = self._buffer(spec.name, _nbytes(shape, spec.dtype))
            context.set_tensor_address(spec.name, ptr)
            pending.append((spec, shape, host, ptr))
        if not context.execute_async_v3(memory.handle(stream)):
            raise CloExportError(f"TensorRT execution of '{self.path.name}' failed (see the clo_export.tensorrt log); "
                                 "rerun with --verbose")
        for _, _, host, ptr in pending:
            memory.dtoh_async(host, ptr, stream)
        memory.synchronize(stream)
        return {spec.name: host.view(spec.dtype).reshape(shape).copy() for spec, shape, host, _ in pending}


TrtRunner = TensorRTRunner  # the name backends.base.load_runner looks up first


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return int(math.prod(shape)) * np.dtype(dtype).itemsize
