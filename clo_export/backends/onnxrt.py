"""ONNX Runtime runner: providers chosen from what is installed (TensorRT, CUDA, CPU) unless given."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from clo_export.backends.base import Runner, TensorSpec
from clo_export.backends.device import device_index
from clo_export.errors import CloExportError
from clo_export.lazy import lazy_import

log = logging.getLogger(__name__)

PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")
GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
ORT_TYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
}


def choose_providers(available: list[str], requested: list[str] | None = None) -> list[str]:
    """Requested providers (checked) or the installed ones in order of preference."""
    if requested:
        missing = [p for p in requested if p not in available]
        if missing:
            raise CloExportError(
                f"ONNX Runtime provider(s) {missing} are not installed here (available: {available}); "
                "install onnxruntime-gpu for CUDA/TensorRT or drop --providers"
            )
        return list(requested)
    return [p for p in PREFERRED if p in available] or list(available)


def providers_for_device(device: str | None) -> list[str] | None:
    """Providers for a --device: None picks from what is installed, cpu forces CPU, cuda[:N] asks for CUDA."""
    if device is None:
        return None
    if device_index(device) is None:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


def _shape_text(spec: TensorSpec) -> str:
    return "x".join("?" if d is None else str(d) for d in spec.shape) + f" {spec.dtype}"


def check_detector_inputs(specs: list[TensorSpec], where: str) -> None:
    """Refuse a model that is not fed like a YOLOv5 detector: one float input of layout Nx3xHxW (NCHW)."""
    layout = "one input of layout 1x3xHxW (NCHW, RGB, 0-1) float32 or float16"
    found = ", ".join(f"'{s.name}' {_shape_text(s)}" for s in specs)
    if len(specs) != 1:
        raise CloExportError(
            f"{where} takes {len(specs)} inputs ({found}); clo-export runs YOLOv5 detectors with "
            f"{layout}: export the detector with clo-export onnx or YOLOv5's export.py"
        )
    spec = specs[0]
    channels_last = len(spec.shape) == 4 and spec.shape[3] == 3 and spec.shape[1] not in (3, None)
    if len(spec.shape) != 4 or spec.shape[1] not in (3, None) or spec.dtype not in (np.float32, np.float16):
        nhwc = " (channels last, NHWC)" if channels_last else ""
        raise CloExportError(
            f"{where} takes {found}{nhwc}; clo-export runs YOLOv5 detectors with {layout}: export it "
            "with channels first (clo-export onnx or YOLOv5's export.py)"
        )


class OnnxRuntimeRunner(Runner):
    """Runs an ONNX model (path or serialized bytes) in an ONNX Runtime session."""

    name = "onnxruntime"
    any_batch = True

    def __init__(
        self,
        model: str | Path | bytes,
        providers: list[str] | None = None,
        threads: int | None = None,
        device_id: int = 0,
    ):
        super().__init__()
        self.model = model
        self.device_id = device_id
        self.requested = providers
        self.threads = threads
        self.session = None

    def activate_impl(self) -> None:
        ort = lazy_import("onnxruntime")
        providers = choose_providers(ort.get_available_providers(), self.requested)
        opts = ort.SessionOptions()
        if self.threads:
            opts.intra_op_num_threads = self.threads
        opts.log_severity_level = 3
        if providers[0] == "CPUExecutionProvider":
            # ONNX Runtime keeps a memory pattern per input shape; several streams' batches vary in size (measured, 4
            # streams of the demo model at 256: peak RSS 263 MB without patterns vs 280 MB, the same CPU per frame)
            opts.enable_mem_pattern = False
        source = self.model if isinstance(self.model, bytes) else str(self.model)
        try:
            options = [{"device_id": str(self.device_id)} if p in GPU_PROVIDERS else {} for p in providers]
            self.session = ort.InferenceSession(
                source, sess_options=opts, providers=providers, provider_options=options
            )
        except Exception as e:
            where = "the model" if isinstance(self.model, bytes) else f"'{self.model}'"
            raise CloExportError(f"ONNX Runtime cannot load {where}: {str(e).splitlines()[0]}") from e
        log.debug("onnxruntime providers: %s", self.session.get_providers())
        self._inputs = [
            TensorSpec(
                i.name,
                tuple(d if isinstance(d, int) else None for d in i.shape),
                np.dtype(ORT_TYPES.get(i.type, np.float32)),
            )
            for i in self.session.get_inputs()
        ]
        check_detector_inputs(self._inputs, "the model" if isinstance(self.model, bytes) else f"'{self.model}'")
        self._outputs = [o.name for o in self.session.get_outputs()]

    def runs_on_cpu(self) -> bool:
        """Whether the session will run on the CPU provider (decided before activation)."""
        ort = lazy_import("onnxruntime")
        return choose_providers(ort.get_available_providers(), self.requested)[0] == "CPUExecutionProvider"

    def with_threads(self, threads: int | None) -> OnnxRuntimeRunner:
        """Another (inactive) runner of the same model and providers with ``threads`` intra-op threads."""
        return OnnxRuntimeRunner(self.model, self.requested, threads, self.device_id)

    @property
    def providers(self) -> list[str]:
        """The providers the session really uses (after activate)."""
        return self.session.get_providers() if self.session is not None else []

    def deactivate_impl(self) -> None:
        self.session = None

    def input_specs_impl(self) -> list[TensorSpec]:
        return list(self._inputs)

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        specs = {s.name: s for s in self._inputs}
        cast = {k: np.ascontiguousarray(v, dtype=specs[k].dtype) if k in specs else v for k, v in feed.items()}
        return dict(zip(self._outputs, self.session.run(self._outputs, cast)))
