"""The engine checks itself: a new TensorRT engine against ONNX Runtime on the FP32 ONNX, over real frames.

TensorRT can miscompile silently (NVIDIA/TensorRT#4854: a fused conv + activation + residual add cost
0.24 mAP50 with no error), so ``build_engine`` runs the engine it wrote and the FP32 ONNX on the same
frames through the one :class:`~clo_export.comparator.Comparator`, judged by the engine precision's
tolerance. The frames are calibration images when the build was given some, else sample frames.
The reference is the given ONNX when it is FP32, else the FP32 ONNX beside it (its sidecar's source,
or the name without ``.fp16``/``.int8``), else — said so in the result — the given ONNX itself.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from clo_export.backends.base import Runner
from clo_export.engine.onnx_facts import OnnxFacts
from clo_export.errors import CloExportError
from clo_export.report import TOLERANCES, Report

log = logging.getLogger(__name__)
CHECK_FRAMES = 8  # frames the engine and the reference both run
NOT_CHECKED = {"status": "not checked", "passed": None}  # the sidecar's parity after --no-check


@dataclass(frozen=True)
class EngineCheck:
    """The engine's comparison with its FP32 reference; falsy when it failed."""

    report: Report
    reference: str  # file name of the ONNX compared with
    why: str  # why that one
    frames: str  # where the frames came from

    def __bool__(self) -> bool:
        return bool(self.report)

    @property
    def status(self) -> str:
        return "passed" if self else "failed"

    def to_dict(self) -> Dict[str, Any]:
        """The sidecar's ``parity``: status, what was compared with what, the limits and the full Report."""
        return {
            "status": self.status,
            "passed": bool(self),
            "reference": self.reference,
            "why": self.why,
            "frames": self.frames,
            "limits": self.report.tolerance.describe(),
            "failures": self.report.failures,
            "report": self.report.to_dict(),
        }


def failed_to_run(error: CloExportError, reference: str = "") -> Dict[str, Any]:
    """The sidecar's ``parity`` when the check itself could not run (the engine would not load or infer)."""
    return {"status": "failed", "passed": False, "reference": reference, "failures": [str(error)]}


def open_engine(path: Path) -> Runner:
    """The runner that executes a built engine (TensorRT; tests inject a stand-in through build_engine)."""
    from clo_export.backends.trt import TensorRTRunner

    return TensorRTRunner(path)


def reference_onnx(path: Path, facts: OnnxFacts) -> Tuple[Path, str]:
    """The FP32 ONNX to compare an engine built from ``path`` with, and why that one."""
    if (facts.meta.precision or "fp32") == "fp32":
        return path, "the FP32 ONNX it was built from"
    for candidate in _fp32_candidates(path):
        if candidate != path and candidate.is_file() and _same_model(candidate, facts):
            return candidate, f"the FP32 ONNX beside {path.name}"
    return path, (
        f"the {facts.meta.precision} ONNX it was built from: no FP32 ONNX of the same model beside it, so "
        "this checks TensorRT's compilation, not the precision loss"
    )


def _fp32_candidates(path: Path) -> List[Path]:
    """Where clo-export puts the FP32 ONNX of a quantized or --half one: its sidecar's source, or MODEL.onnx."""
    from clo_export.artifacts import OnnxSidecar

    out = []
    try:
        source = OnnxSidecar.read(path).source
        if source.lower().endswith(".onnx"):
            out.append(path.with_name(source))
    except CloExportError:
        pass
    for tag in (".fp16", ".int8"):
        if path.stem.endswith(tag):
            out.append(path.with_name(path.stem[: -len(tag)] + path.suffix))
    return out


def _same_model(candidate: Path, facts: OnnxFacts) -> bool:
    """An FP32 ONNX with the same input, outputs and classes as the engine's source."""
    from clo_export.artifacts import load_onnx
    from clo_export.engine.onnx_facts import onnx_facts

    try:
        other = onnx_facts(load_onnx(candidate, load_external_data=False), candidate.name)
    except CloExportError:
        return False
    return (
        (other.meta.precision or "fp32") == "fp32"
        and other.input_shape == facts.input_shape
        and other.output_names == facts.output_names
        and other.meta.names == facts.meta.names
        and other.meta.nms == facts.meta.nms
    )


def sample_frames(n: int = CHECK_FRAMES) -> List[np.ndarray]:
    """BGR sample frames for checks given no images of their own (scenes of the demo generator, made in memory)."""
    from clo_export.demo.shapes import make_video_frames

    return [f.image for f in make_video_frames(4, n, (480, 640))]


def check_feeds(facts: OnnxFacts, batch: int, calib: Sequence[str] = (), n: int = CHECK_FRAMES) -> Tuple[list, str]:
    """Feeds of ``batch`` frames for the check: calibration images when given (not a cache file), else sample frames."""
    from clo_export.data.preprocess import preprocess_batch

    images = [c for c in calib if Path(c).suffix.lower() not in (".cache", ".calib", ".bin")]
    if images:
        from clo_export.quantization.calibset import CalibrationData, split_sources

        split = split_sources(list(images), max(n, batch), 0, min_images=1)
        return list(
            CalibrationData(split.calib, facts.imgsz, facts.input_name, batch)
        ), f"{len(split.calib)} calibration images"
    frames = sample_frames(max(n, batch))
    feeds = [
        {facts.input_name: preprocess_batch(frames[i : i + batch], facts.imgsz)[0]}
        for i in range(0, len(frames) - batch + 1, batch)
    ]
    return feeds, f"{len(feeds) * batch} sample frames"


def check_engine(
    engine: Path,
    source: Path,
    facts: OnnxFacts,
    precision: str,
    batch: int,
    calib: Sequence[str] = (),
    engine_runner: Optional[Callable[[Path], Runner]] = None,
) -> EngineCheck:
    """Run ``engine`` and ONNX Runtime on ``source``'s FP32 reference over the same frames; judge by ``precision``."""
    from clo_export.backends.onnxrt import OnnxRuntimeRunner
    from clo_export.comparator import Comparator, Comparison, Thresholds

    reference, why = reference_onnx(source, facts)
    feeds, frames = check_feeds(facts, batch, calib)
    if not feeds:
        raise CloExportError(
            f"no readable frames to check the engine with ({frames}); pass images with --calib "
            "or skip the check with --no-check"
        )
    comparison = Comparison(precision if precision in TOLERANCES else "fp32", Thresholds().for_model(facts.meta))
    with OnnxRuntimeRunner(reference, providers=["CPUExecutionProvider"]) as ref, (engine_runner or open_engine)(
        engine
    ) as test:
        report = Comparator(ref, comparison).report(test, feeds)
    log.info("engine check against %s (%s) on %s: %s", reference.name, why, frames, "passed" if report else "failed")
    return EngineCheck(report, reference.name, why, frames)
