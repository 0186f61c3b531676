"""clo-export: YOLOv5 + CloFormer EfficientAttention to verified ONNX, INT8 and TensorRT.

The Python API, one call per ``clo-export`` step (README, "Python API")::

    import clo_export

    model = clo_export.load("best.pt")
    onnx = clo_export.export_onnx(model)  # at the checkpoint's training size
    int8 = clo_export.quantize(onnx.path, "calib_images/")
    engine = clo_export.build_engine(int8.path, clo_export.BuildRequest(precision="int8"))
    runner, info = clo_export.load_runner(engine.engine_path)

Each call imports only what its step needs: ``import clo_export`` loads no torch, ONNX, ONNX
Runtime, TensorRT or OpenCV, so ``clo-infer`` starts fast and runs without torch on Python 3.8.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Optional, Sequence, Tuple, Union

from clo_export.lazy import lazy_attributes

__version__ = "0.1.0"

if TYPE_CHECKING:
    from clo_export.artifacts import ModelInfo
    from clo_export.backends.base import Runner
    from clo_export.engine.build import EngineBuild
    from clo_export.engine.plan import BuildRequest
    from clo_export.export.exporter import ExportOptions, ExportResult
    from clo_export.models.checkpoint import LoadedModel
    from clo_export.pipeline.model_check import ModelCheck, check_model
    from clo_export.pipeline.options import InferOptions
    from clo_export.quantization.quantize import QuantizeOptions, QuantizeResult
    from clo_export.thresholds import Thresholds

PathLike = Union[str, "os.PathLike[str]"]

# The option and result types, importable from the top without importing their modules up front.
__getattr__ = lazy_attributes(
    __name__,
    {
        "LoadedModel": "clo_export.models.checkpoint",
        "ExportOptions": "clo_export.export.exporter",
        "ExportResult": "clo_export.export.exporter",
        "QuantizeOptions": "clo_export.quantization.quantize",
        "QuantizeResult": "clo_export.quantization.quantize",
        "BuildRequest": "clo_export.engine.plan",
        "EngineBuild": "clo_export.engine.build",
        "ModelInfo": "clo_export.artifacts",
        "Runner": "clo_export.backends.base",
        "CloExportError": "clo_export.errors",
        "check_model": "clo_export.pipeline.model_check",
        "ModelCheck": "clo_export.pipeline.model_check",
        "InferOptions": "clo_export.pipeline.options",
        "Thresholds": "clo_export.thresholds",
    },
)

__all__ = [
    "__version__",
    "load",
    "export_onnx",
    "quantize",
    "build_engine",
    "load_runner",
    "check_model",
    "LoadedModel",
    "ExportOptions",
    "ExportResult",
    "QuantizeOptions",
    "QuantizeResult",
    "BuildRequest",
    "EngineBuild",
    "ModelInfo",
    "Runner",
    "CloExportError",
    "ModelCheck",
    "InferOptions",
    "Thresholds",
]


def load(path: PathLike, cfg: Optional[PathLike] = None, plugins: Sequence[PathLike] = ()) -> LoadedModel:
    """Load a YOLOv5(+CloFormer) checkpoint or state dict as an FP32 eval model (never runs pickled code).

    ``cfg`` is the model YAML for a bare state dict; ``plugins`` are ``--plugin`` files with your own blocks.
    """
    from clo_export.models.checkpoint import load as load_checkpoint

    return load_checkpoint(path, cfg, tuple(plugins))


def export_onnx(
    model: Union[LoadedModel, PathLike],
    out: Optional[PathLike] = None,
    options: Optional[ExportOptions] = None,
    *,
    check: bool = True,
    source: Optional[PathLike] = None,
    cfg: Optional[PathLike] = None,
    plugins: Sequence[PathLike] = (),
) -> ExportResult:
    """``clo-export onnx``: a static-shape ONNX (``out``, default beside the checkpoint) and its sidecar JSON.

    ``model`` is a :func:`load` result or a checkpoint path (loaded with ``cfg`` and ``plugins``). The input
    size is ``options.imgsz``, else the size the checkpoint was trained at (640 when it records none); the log
    says which. Refused before any work, as on the command line: bad options, an ``out`` (or its sidecar) that
    is an input (the checkpoint, ``cfg``, a plugin, a ``source`` file; also through a link). With ``check`` the
    ONNX is run in ONNX Runtime beside PyTorch on seeded random batches plus real frames (``source``'s, else the
    bundled samples): ``result.parity`` is the Report, truthy only when its verdict is passed (not when failed or
    inconclusive; the file is still written, to inspect it).
    """
    from clo_export.export.exporter import ExportOptions, export_checkpoint

    return export_checkpoint(
        model, out, options or ExportOptions(), check=check, source=source, cfg=cfg, plugins=plugins
    )


def quantize(
    onnx: PathLike,
    images: Union[PathLike, Sequence[PathLike]],
    out: Optional[PathLike] = None,
    options: Optional[QuantizeOptions] = None,
) -> QuantizeResult:
    """``clo-export quantize``: an INT8 Q/DQ ONNX calibrated on ``images`` (folders, files or globs).

    Method and float fallback are chosen on a held-out split; the result carries its mAP report.
    """
    from clo_export.quantization.quantize import QuantizeOptions
    from clo_export.quantization.quantize import quantize as run

    return run(onnx, images, out, options or QuantizeOptions())


def build_engine(
    onnx: PathLike,
    request: Optional[BuildRequest] = None,
    out: Optional[PathLike] = None,
    *,
    calib: Sequence[str] = (),
    num: int = 256,
    min_agreement: Optional[float] = None,
    verbose: bool = False,
    check: bool = True,
) -> EngineBuild:
    """``clo-export trt``: a TensorRT engine for the installed TensorRT and this GPU, with its sidecar JSON.

    With ``check`` (the default, as ``clo-export trt``) the engine is run against ONNX Runtime on the FP32 ONNX
    and the sidecar records the result; a failed engine is kept, marked failed, and the result is falsy.
    ``check=False`` is ``--no-check``. ``num`` is ``--num``: calibration images read from ``calib``;
    ``min_agreement`` is ``--min-agreement``, the accuracy gate of the INT8 model quantized from them.
    """
    from clo_export.engine.build import build_engine as build
    from clo_export.engine.plan import BuildRequest

    return build(
        onnx,
        request or BuildRequest(),
        out,
        calib=calib,
        num=num,
        min_agreement=min_agreement,
        verbose=verbose,
        check=check,
    )


def load_runner(
    model: PathLike,
    device: Optional[str] = None,
    *,
    imgsz: Optional[Tuple[int, int]] = None,
    providers: Optional[Sequence[str]] = None,
    threads: Optional[int] = None,
) -> Tuple[Runner, ModelInfo]:
    """A Runner (use it as a context manager) and the ModelInfo for a ``.pt``, ``.onnx`` or ``.engine`` file.

    ``runner.infer({info.input_name: batch})`` takes letterboxed NCHW float32 (see
    ``clo_export.data.preprocess``); only the chosen backend's dependencies are imported.
    """
    from clo_export.backends.select import load_runner as load_one

    return load_one(model, device, list(providers) if providers else None, imgsz, threads)
