"""TensorRT implicit INT8 calibrators (TensorRT < 11, DLA on JetPack 5) through Polygraphy.

``make_calibrator`` wraps the calibration feeds (``CalibrationData``: the one preprocessing
function, the same ``{input_name: array}`` batches the Q/DQ quantizer uses) in
``polygraphy.backend.trt.Calibrator`` with ``trt.IInt8EntropyCalibrator2`` or
``trt.IInt8MinMaxCalibrator`` as base class (``clo_export.engine.plan.CALIBRATOR_CLASSES``);
Polygraphy copies each batch to the GPU. The calibration cache is ours: read only when made by
the same algorithm, written atomically after the build (:func:`save_cache`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Iterable, Optional

from clo_export.engine.plan import CALIBRATOR_CLASSES
from clo_export.errors import CloExportError
from clo_export.fileio import atomic_path
from clo_export.lazy import lazy_import

log = logging.getLogger(__name__)

# first line of TensorRT's cache: "TRT-<version>-EntropyCalibration2" / "TRT-<version>-MinMaxCalibration"
CACHE_ALGORITHMS = {"entropy": "EntropyCalibration2", "minmax": "MinMaxCalibration"}


def read_cache(path: str | os.PathLike | None, method: str) -> Optional[bytes]:
    """TensorRT's calibration cache at ``path`` if it exists and was made by ``method`` (else None: calibrate)."""
    if method not in CACHE_ALGORITHMS:
        raise CloExportError(f"unknown calibrator {method!r}; use {', '.join(CACHE_ALGORITHMS)}")
    if path is None or not Path(path).is_file():
        return None
    data = Path(path).read_bytes()
    header = data.split(b"\n", 1)[0].decode("ascii", "replace")
    want = CACHE_ALGORITHMS[method]
    if not header.endswith(want):
        log.warning(
            "TensorRT calibration cache %s was made by %s, not %s; ignoring it and recalibrating",
            path,
            header or "an unknown calibrator",
            want,
        )
        return None
    log.info("TensorRT calibration cache hit: %s", path)
    return data


def make_calibrator(data: Iterable[Any], method: str = "entropy", cache_path: str | os.PathLike | None = None) -> Any:
    """A Polygraphy calibrator over ``data`` on TensorRT's entropy or min-max base class, primed with the cache."""
    cached = read_cache(cache_path, method)
    trt = lazy_import("tensorrt")
    base = getattr(trt, CALIBRATOR_CLASSES[method], None)
    if base is None:
        raise CloExportError(
            f"TensorRT {getattr(trt, '__version__', '?')} has no {CALIBRATOR_CLASSES[method]} "
            "(removed in 11); use the Q/DQ model from clo-export quantize"
        )
    from polygraphy.backend.trt import Calibrator

    calibrator = Calibrator(data, BaseClass=base)
    calibrator.cache_contents = cached  # Polygraphy hands TensorRT these bytes instead of calibrating
    return calibrator


def save_cache(calibrator: Any, path: str | os.PathLike | None) -> None:
    """Write the cache TensorRT produced (or was given) atomically, if it changed."""
    data = getattr(calibrator, "cache_contents", None)
    if path is None or not data:
        return
    path = Path(path)
    if path.is_file() and path.read_bytes() == bytes(data):
        return
    with atomic_path(path) as tmp:
        tmp.write_bytes(bytes(data))
