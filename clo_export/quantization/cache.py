"""Calibration ranges cache: a small JSON keyed by model hash, preprocessing, method and image set.

A rerun with the same key skips calibration; any difference (another model, image size,
preprocessing, method or set of images) makes the cache stale: it is ignored with a message
and rewritten after calibrating.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from clo_export.fileio import json_text, write_text_atomic

log = logging.getLogger(__name__)

FORMAT = "clo-export-calib/1"


def preprocess_params(imgsz: tuple[int, int], input_name: str = "images", batch: int = 1) -> dict[str, Any]:
    """Everything about how calibration tensors were made (clo_export.data.preprocess.preprocess)."""
    return {
        "fn": "clo_export.data.preprocess.preprocess",
        "imgsz": [int(imgsz[0]), int(imgsz[1])],
        "letterbox": "full",
        "pad": 114,
        "interp": "INTER_LINEAR",
        "color": "RGB",
        "scale": "1/255",
        "layout": "NCHW",
        "dtype": "float32",
        "input": input_name,
        "batch": int(batch),
    }


@dataclass(frozen=True)
class CacheKey:
    """What the ranges depend on."""

    model_sha256: str
    method: str
    preprocess: dict[str, Any]
    images: str  # digest of the calibration image list (see CalibSplit.digest)

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Which fields of a cached key differ from this one."""
        mine = asdict(self)
        return [k for k in mine if other.get(k) != mine[k]]


@dataclass(frozen=True)
class CacheLookup:
    """Result of looking up the cache: ranges on a hit, and why not otherwise."""

    status: str  # "hit" | "missing" | "stale" | "ignored"
    ranges: dict[str, float] | None = None
    reason: str = ""


def load_ranges(path: str | os.PathLike, key: CacheKey, tensors: list[str]) -> CacheLookup:
    """Cached ranges for ``key`` covering ``tensors``, or why they cannot be used (logged)."""
    path = Path(path)
    if not path.is_file():
        return CacheLookup("missing", reason=f"no calibration cache at {path}")
    try:
        data = json.loads(path.read_text())
        cached_key, ranges = data["key"], {k: float(v) for k, v in data["ranges"].items()}
        fmt = data.get("format")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        reason = f"calibration cache {path} is unreadable ({type(e).__name__}); recalibrating"
        log.warning(reason)
        return CacheLookup("stale", reason=reason)
    diff = (["format"] if fmt != FORMAT else []) + key.differences(cached_key)
    lacking = [t for t in tensors if t not in ranges]
    if lacking:
        diff.append(f"{len(lacking)} tensor(s) without a range")
    if diff:
        reason = f"calibration cache {path} is stale (differs in: {', '.join(diff)}); ignoring it and recalibrating"
        log.warning(reason)
        return CacheLookup("stale", reason=reason)
    log.info("calibration cache hit: %s (%d ranges)", path, len(ranges))
    return CacheLookup("hit", ranges={t: ranges[t] for t in tensors}, reason=f"ranges from {path}")


def save_ranges(path: str | os.PathLike, key: CacheKey, ranges: dict[str, float], n_images: int) -> None:
    """Write the ranges and their key atomically."""
    payload = {
        "format": FORMAT,
        "key": asdict(key),
        "n_images": n_images,
        "ranges": {k: float(v) for k, v in ranges.items()},
    }
    write_text_atomic(path, json_text(payload, indent=1))
