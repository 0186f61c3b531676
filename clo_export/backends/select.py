"""Which runner runs a model file: the backend from its suffix, the ModelInfo from the file, the streams.

Only the chosen backend's module (and its dependencies) is imported: an .onnx or .engine never
imports torch. Each backend module imports :mod:`clo_export.backends.base`; nothing here is
imported by a backend.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import List, Optional, Tuple

from clo_export.artifacts import ModelInfo, read_metadata
from clo_export.backends.base import Runner
from clo_export.backends.device import device_index
from clo_export.backends.streams import plan_streams, usable_cores
from clo_export.errors import CloExportError
from clo_export.postprocess import has_nms_outputs

BACKEND_SUFFIXES = {
    ".pt": "pytorch",
    ".pth": "pytorch",
    ".onnx": "onnxruntime",
    ".engine": "tensorrt",
    ".plan": "tensorrt",
}


def backend_for(path: str | os.PathLike) -> str:
    """The backend a model file runs on, from its suffix."""
    suffix = Path(path).suffix.lower()
    if suffix not in BACKEND_SUFFIXES:
        raise CloExportError(
            f"cannot tell the backend of '{path}': use a .pt checkpoint, an .onnx model or a TensorRT .engine"
        )
    return BACKEND_SUFFIXES[suffix]


def load_runner(
    path: str | os.PathLike,
    device: Optional[str] = None,
    providers: Optional[List[str]] = None,
    imgsz: Optional[Tuple[int, int]] = None,
    threads: Optional[int] = None,
) -> Tuple[Runner, ModelInfo]:
    """A (not yet activated) Runner for a model file and its ModelInfo; the backend comes from the suffix.

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


def load_runners(
    path: str | os.PathLike,
    device: Optional[str] = None,
    providers: Optional[List[str]] = None,
    imgsz: Optional[Tuple[int, int]] = None,
    threads: Optional[int] = None,
    workers: Optional[int] = None,
) -> Tuple[List[Runner], ModelInfo]:
    """Runners for parallel inference streams of one model (not yet activated) and its ModelInfo.

    ONNX Runtime on the CPU runs ``workers`` sessions (None: :func:`plan_streams`); GPUs and the
    PyTorch backend run one stream, and refuse ``workers`` > 1.
    """
    if str(path).startswith("triton://"):  # a model on a Triton server (clo_export.backends.triton)
        from clo_export.backends.triton import load_triton_runners

        if device is not None or providers or threads is not None:
            raise CloExportError(
                "--device, --providers and --threads choose local hardware; the Triton server decides "
                f"where {path} runs: drop them"
            )
        return load_triton_runners(str(path), workers, imgsz)
    runner, info = load_runner(path, device, providers, imgsz, threads)
    cpu = info.backend == "onnxruntime" and runner.runs_on_cpu()
    if not cpu:
        if workers not in (None, 1):
            where = "PyTorch" if info.backend == "pytorch" else "the GPU"
            raise CloExportError(
                f"--workers {workers} runs several ONNX Runtime sessions on the CPU, but "
                f"'{Path(path).name}' runs on {where} with one stream: drop --workers"
            )
        return [runner], info
    n, per = plan_streams(workers, threads, usable_cores())
    return [runner.with_threads(per) for _ in range(n)], info


def _load_torch(path: Path, device: Optional[str], imgsz: Optional[Tuple[int, int]]) -> Tuple[Runner, ModelInfo]:
    from clo_export.backends.pytorch import TorchRunner, load_checkpoint

    loaded, info = load_checkpoint(path, imgsz)
    return TorchRunner(loaded.model, device, fuse=True), info


def _load_onnx(
    path: Path,
    device: Optional[str],
    providers: Optional[List[str]],
    imgsz: Optional[Tuple[int, int]],
    threads: Optional[int],
) -> Tuple[Runner, ModelInfo]:
    from clo_export.backends.onnxrt import OnnxRuntimeRunner, providers_for_device
    from clo_export.imgsz import model_imgsz

    meta = read_metadata(path)
    size = model_imgsz(path.name, meta.imgsz, imgsz)
    info = ModelInfo(
        str(path),
        "onnxruntime",
        dict(meta.names),
        size,
        meta.stride,
        meta.precision or "fp32",
        meta.nms,
        meta.nms_conf,
        meta.nms_iou,
        meta.nms_max_det,
    )
    runner = OnnxRuntimeRunner(path, providers or providers_for_device(device), threads, device_index(device) or 0)
    return runner, info


def _load_engine(path: Path, device: Optional[str], imgsz: Optional[Tuple[int, int]]) -> Tuple[Runner, ModelInfo]:
    from clo_export.engine.sidecar import EngineSidecar
    from clo_export.imgsz import model_imgsz

    side = EngineSidecar.read(path)
    model_imgsz(path.name, tuple(side.imgsz), imgsz)
    try:
        trt_backend = importlib.import_module("clo_export.backends.trt")
    except ModuleNotFoundError as e:
        what = "the TensorRT Python package" if e.name and e.name.split(".")[0] == "tensorrt" else f"module {e.name}"
        raise CloExportError(
            f"running '{path.name}' needs {what}, which is not installed here; install TensorRT "
            "(pip install tensorrt, or JetPack on Jetson) or run the .onnx with ONNX Runtime"
        ) from e
    info = ModelInfo(
        str(path),
        "tensorrt",
        dict(enumerate(side.names)),
        tuple(side.imgsz),
        side.stride,
        side.precision,
        has_nms_outputs(side.output_names),
    )
    return trt_backend.TensorRTRunner(path, device), info
