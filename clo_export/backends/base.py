"""The Runner interface every backend implements (Polygraphy-style).

Nothing is loaded or allocated before :meth:`Runner.activate`, so constructing a runner is
free and ``--help`` never touches a GPU. Feeds and outputs are ``{name: ndarray}`` dicts.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from clo_export.errors import CloExportError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dimension) and dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class RunnerGone(CloExportError):
    """The server a runner talks to went away mid-run: the pipeline stops cleanly with what was done."""


class Runner(ABC):
    """Runs a model on one backend; use as a context manager."""

    name = "runner"

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> Runner:
        """Load the model and allocate what inference needs."""
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release the model and its buffers."""
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.deactivate()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: ``{input_name: array}`` in, ``{output_name: array}`` out."""
        if not self.is_active:
            raise CloExportError(f"{self.name} runner used before activate(); use it as `with runner:`")
        return self.infer_impl(feed)

    def input_specs(self) -> list[TensorSpec]:
        """The model's inputs (after activate)."""
        if not self.is_active:
            raise CloExportError(f"{self.name} runner used before activate(); use it as `with runner:`")
        return self.input_specs_impl()

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def input_specs_impl(self) -> list[TensorSpec]: ...


BACKEND_SUFFIXES = {".pt": "pytorch", ".pth": "pytorch", ".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt"}
NMS_OUTPUTS = ("num_dets", "boxes", "scores", "classes")


@dataclass(frozen=True)
class ModelInfo:
    """What inference needs to know about a model, read from the file itself (metadata or sidecar)."""

    path: str
    backend: str  # "pytorch" | "onnxruntime" | "tensorrt"
    names: dict[int, str]
    imgsz: tuple[int, int]  # (H, W) the model takes
    stride: int = 32
    precision: str = "fp32"
    nms: bool = False  # in-graph NMS: outputs num_dets, boxes, scores, classes
    nms_conf: float | None = None
    nms_iou: float | None = None
    nms_max_det: int | None = None

    def class_name(self, cls: int) -> str:
        """The class name, or the id as text for an unnamed class."""
        return self.names.get(int(cls), str(int(cls)))


def backend_for(path: str | os.PathLike) -> str:
    """The backend a model file runs on, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in BACKEND_SUFFIXES:
        raise CloExportError(f"cannot tell the backend of '{path}': use a .pt checkpoint, an .onnx model or a TensorRT .engine")
    return BACKEND_SUFFIXES[suffix]


def load_runner(path: str | os.PathLike, device: str | None = None, providers: list[str] | None = None,
                imgsz: tuple[int, int] | None = None, threads: int | None = None) -> tuple[Runner, ModelInfo]:
    """A (not yet activated) Runner for a model file and its ModelInfo; the backend comes from the suffix.

    Only the chosen backend's dependencies are imported: an .onnx or .engine never imports torch.
    ``device`` None picks automatically (CUDA when present); ``providers`` overrides ONNX Runtime's choice.
    ``imgsz`` overrides a checkpoint's training size; fixed-size models refuse a different one.
    """
    path = Path(path)
    if not path.exists():
        raise CloExportError(f"model '{path}' does not exist; pass a .pt checkpoint, an .onnx model or a .engine")
    backend = backend_for(path)
    if backend == "pytorch":
        return _load_torch(path, device, imgsz)
    if backend == "onnxruntime":
        return _load_onnx(path, device, providers, imgsz, threads)
    return _load_engine(path, device, imgsz)


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def plan_streams(workers: int | None, threads: int | None, cores: int) -> tuple[int, int | None]:
    """(inference streams, intra-op threads each) for ONNX Runtime on the CPU.

    Default: two sessions that split the cores when there are at least two. One session with every
    core spends time in its threads' barriers, and those stall whenever decoding or encoding takes a
    core; two half-size sessions each stay busy and together keep all cores working (README:
    Benchmarks). One stream keeps ONNX Runtime's own thread default unless ``threads`` is given.
    """
    if workers is not None and workers < 1:
        raise CloExportError(f"--workers {workers} must be at least 1")
    n = workers or (2 if cores >= 2 else 1)
    if threads is not None and threads < 1:
        raise CloExportError(f"--threads {threads} must be at least 1")
    return n, threads or (max(1, cores // n) if n > 1 else None)


def load_runners(path: str | os.PathLike, device: str | None = None, providers: list[str] | None = None,
                 imgsz: tuple[int, int] | None = None, threads: int | None = None,
                 workers: int | None = None) -> tuple[list[Runner], ModelInfo]:
    """Runners for parallel inference streams of one model (not yet activated) and its ModelInfo.

    ONNX Runtime on the CPU runs ``workers`` sessions (None: :func:`plan_streams`); GPUs and the
    PyTorch backend run one stream, and refuse ``workers`` > 1.
    """
    if str(path).startswith("triton://"):  # a model on a Triton server (clo_export.backends.triton)
        from clo_export.backends.triton import load_triton_runners

        if device is not None or providers or threads is not None:
            raise CloExportError("--device, --providers and --threads choose local hardware; the Triton server decides "
                                 f"where {path} runs: drop them")
        return load_triton_runners(str(path), workers, imgsz)
    runner, info = load_runner(path, device, providers, imgsz, threads)
    cpu = info.backend == "onnxruntime" and runner.runs_on_cpu()
    if not cpu:
        if workers not in (None, 1):
            where = "PyTorch" if info.backend == "pytorch" else "the GPU"
            raise CloExportError(f"--workers {workers} runs several ONNX Runtime sessions on the CPU, but "
                                 f"'{Path(path).name}' runs on {where} with one stream: drop --workers")
        return [runner], info
    n, per = plan_streams(workers, threads, usable_cores())
    return [runner.with_threads(per) for _ in range(n)], info


def _load_torch(path: Path, device: str | None, imgsz: tuple[int, int] | None) -> tuple[Runner, ModelInfo]:
    from clo_export.lazy import lazy_import

    lazy_import("torch")  # a runtime-only install gets the install hint, not an ImportError
    from clo_export.backends.pytorch import TorchRunner
    from clo_export.imgsz import check_memory
    from clo_export.models.checkpoint import load

    loaded = load(path)
    size = tuple(imgsz or loaded.imgsz_hint or (640, 640))
    loaded.model.check_imgsz(size)
    check_memory(loaded.model, size, 1, factor=2)  # an --imgsz that cannot fit: refused before a frame is allocated
    info = ModelInfo(str(path), "pytorch", dict(loaded.names), size, loaded.model.max_stride, "fp32")
    return TorchRunner(loaded.model, device, fuse=True), info


def _load_onnx(path: Path, device: str | None, providers: list[str] | None, imgsz: tuple[int, int] | None,
               threads: int | None) -> tuple[Runner, ModelInfo]:
    from clo_export.backends.onnxrt import OnnxRuntimeRunner, device_index, providers_for_device
    from clo_export.export.metadata import read_metadata

    from clo_export.imgsz import model_imgsz

    meta = read_metadata(path)
    size = model_imgsz(path.name, meta.imgsz, imgsz)
    info = ModelInfo(str(path), "onnxruntime", dict(meta.names), size, meta.stride, meta.precision or "fp32",
                     meta.nms, meta.nms_conf, meta.nms_iou, meta.nms_max_det)
    runner = OnnxRuntimeRunner(path, providers or providers_for_device(device), threads, device_index(device))
    return runner, info


def _load_engine(path: Path, device: str | None, imgsz: tuple[int, int] | None) -> tuple[Runner, ModelInfo]:
    from clo_export.engine.sidecar import EngineSidecar

    from clo_export.imgsz import model_imgsz

    side = EngineSidecar.read(path)
    model_imgsz(path.name, tuple(side.imgsz), imgsz)
    try:
        import importlib

        trt_backend = importlib.import_module("clo_export.backends.trt")
    except ModuleNotFoundError as e:
        what = "the TensorRT Python package" if e.name and e.name.split(".")[0] == "tensorrt" else f"module {e.name}"
        raise CloExportError(f"running '{path.name}' needs {what}, which is not installed here; install TensorRT "
                             "(pip install tensorrt, or JetPack on Jetson) or run the .onnx with ONNX Runtime") from e
    runner_cls = getattr(trt_backend, "TensorRTRunner", None) or getattr(trt_backend, "TrtRunner")
    nms = all(name in side.output_names for name in NMS_OUTPUTS)
    info = ModelInfo(str(path), "tensorrt", dict(enumerate(side.names)), tuple(side.imgsz), side.stride,
                     side.precision, nms)
    if device not in (None, "cuda", "cuda:0") and not str(device).startswith("cuda"):
        raise CloExportError(f"TensorRT engines run on the GPU; drop --device {device} or pass the .onnx for CPU")
    from clo_export.backends.onnxrt import device_index

    return runner_cls(path, device_index(device)), info
