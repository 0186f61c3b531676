"""TensorRT runner: Polygraphy's ``TrtRunner`` (named tensors, ``execute_async_v3``, TensorRT 8.5 … 11.x).

Activation reads the engine's sidecar (``ENGINE.json``) and refuses a TensorRT version or GPU
architecture that cannot load it, before TensorRT is asked; a failed deserialization becomes a
one-line rebuild hint. Polygraphy deserializes the engine (``EngineFromBytes``), creates the
execution context, keeps device buffers and the CUDA stream (``polygraphy.cuda``, libcudart via
ctypes: no pycuda, no cuda-python, no torch). Nothing is imported or allocated before
:meth:`TensorRTRunner.activate`. Outputs come back as fresh numpy arrays in the engine's dtypes.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from clo_export.artifacts import rebuild_command
from clo_export.backends.base import Runner, TensorSpec
from clo_export.backends.device import device_index
from clo_export.engine.sidecar import EngineSidecar, check_compatible
from clo_export.errors import CloExportError
from clo_export.fileio import sidecar_path
from clo_export.lazy import lazy_import

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InputSpec:
    """One engine input: name, numpy dtype, shape (-1 = dynamic)."""

    name: str
    dtype: np.dtype
    shape: Tuple[int, ...]


def prepare_input(spec: InputSpec, array: Any) -> np.ndarray:
    """``array`` as a C-contiguous array of the engine's dtype and a shape the engine accepts."""
    array = np.asarray(array)
    if array.dtype != spec.dtype:
        if not np.can_cast(array.dtype, spec.dtype, casting="same_kind"):
            raise CloExportError(
                f"input '{spec.name}' is {array.dtype} but the engine takes {spec.dtype}; "
                f"feed {spec.dtype} data (an INT8-I/O engine needs already quantized input)"
            )
        array = array.astype(spec.dtype)
    array = np.ascontiguousarray(array)
    if len(array.shape) != len(spec.shape) or any(d >= 0 and d != a for d, a in zip(spec.shape, array.shape)):
        want = "x".join("?" if d < 0 else str(d) for d in spec.shape)
        raise CloExportError(
            f"input '{spec.name}' has shape {tuple(array.shape)} but the engine takes {want}; "
            "rebuild it for this size, or with --batch-range for other batch sizes"
        )
    return array


def _one_line(error: Exception) -> str:
    return next((line.strip() for line in str(error).splitlines() if line.strip()), "no details")


class TensorRTRunner(Runner):
    """Runs a serialized TensorRT engine through Polygraphy's TrtRunner.

    ``require_sidecar=False`` also loads engines made by other tools (trtexec), without the
    version/GPU check.
    """

    name = "tensorrt"

    def __init__(self, engine_path: str | os.PathLike, device: Union[str, int, None] = 0, require_sidecar: bool = True):
        super().__init__()
        self.path = Path(engine_path)
        index = device_index(device)
        if index is None:
            raise CloExportError(f"TensorRT engines run on the GPU; drop --device {device} or pass the .onnx for CPU")
        self.device = index
        self.require_sidecar = require_sidecar
        self.sidecar: Optional[EngineSidecar] = None
        self.warnings: List[str] = []
        self._runner: Any = None
        self._inputs: List[InputSpec] = []

    def activate_impl(self) -> None:
        if not self.path.is_file():
            raise CloExportError(f"engine '{self.path}' does not exist; build one with: clo-export trt MODEL.onnx")
        if self.require_sidecar or sidecar_path(self.path).is_file():
            self.sidecar = EngineSidecar.read(self.path)
        trt = lazy_import("tensorrt")
        from polygraphy.backend.trt import EngineFromBytes, TrtRunner
        from polygraphy.datatype import DataType
        from polygraphy.exception import PolygraphyException

        from clo_export.engine.build import quiet_polygraphy
        from clo_export.engine.gpu import gpu_identity, use_device

        quiet_polygraphy()
        use_device(self.device)
        gpu, capability = gpu_identity(self.device)
        if self.sidecar is not None:
            self.warnings = check_compatible(self.sidecar, str(trt.__version__), gpu, capability)
            for w in self.warnings:
                log.warning(w)
        try:
            engine = EngineFromBytes(self.path.read_bytes())()
        except PolygraphyException as e:
            hint = self.sidecar.rebuild_command() if self.sidecar else rebuild_command()
            built = (
                f" (built with TensorRT {self.sidecar.tensorrt_version} on {self.sidecar.gpu_name})"
                if self.sidecar
                else ""
            )
            raise CloExportError(
                f"TensorRT {trt.__version__} could not load '{self.path.name}'{built}: {_one_line(e)}; "
                f"rebuild it on this device with: {hint}"
            ) from None
        runner = TrtRunner(engine)
        try:
            runner.activate()
        except PolygraphyException as e:
            raise CloExportError(
                f"TensorRT could not create an execution context for '{self.path.name}' "
                f"({_one_line(e)}); free GPU memory or rebuild with a smaller --batch-range"
            ) from None
        self._runner = runner
        meta = runner.get_input_metadata(use_numpy_dtypes=False)
        self._inputs = [
            InputSpec(
                name,
                np.dtype(DataType.to_dtype(m.dtype, "numpy")),
                tuple(-1 if d is None or int(d) < 0 else int(d) for d in m.shape),
            )
            for name, m in meta.items()
        ]
        log.debug(
            "TensorRT %s engine %s on %s sm_%d%d: %s",
            trt.__version__,
            self.path.name,
            gpu,
            *capability,
            ", ".join(f"{s.name} {s.dtype} {s.shape}" for s in self._inputs),
        )

    def deactivate_impl(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
        self._runner = None
        self._inputs = []

    def input_specs_impl(self) -> List[TensorSpec]:
        return [TensorSpec(s.name, tuple(None if d < 0 else d for d in s.shape), s.dtype) for s in self._inputs]

    def infer_impl(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        from polygraphy.exception import PolygraphyException

        names = {s.name for s in self._inputs}
        if set(feed) != names:
            missing = sorted(names - set(feed))
            raise CloExportError(
                f"the engine takes inputs {sorted(names)}; got {sorted(feed)}"
                f"{' (missing ' + ', '.join(missing) + ')' if missing else ''}"
            )
        ready = {s.name: prepare_input(s, feed[s.name]) for s in self._inputs}
        try:
            outputs = self._runner.infer(ready, check_inputs=False)
        except PolygraphyException as e:
            raise CloExportError(
                f"TensorRT inference on '{self.path.name}' failed ({_one_line(e)}); a shape outside "
                "the engine's profile needs a rebuild with --batch-range MIN,OPT,MAX"
            ) from None
        # Polygraphy reuses its host buffers between calls: hand out copies
        return {name: np.array(value, copy=True) for name, value in outputs.items()}
