"""How inference is shaped: the streams a CPU run gets and the threads of each, and the frames per inference."""

from __future__ import annotations

import os
from typing import Optional, Tuple

from clo_export.errors import CloExportError


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def plan_streams(workers: Optional[int], threads: Optional[int], cores: int) -> Tuple[int, Optional[int]]:
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


MAX_AUTO_BATCH = 8  # several streams on a model that takes any batch: one frame of each, at most this many


def auto_batch(streams: int, fixed: Optional[int], any_batch: bool) -> int:
    """Frames per inference when --infer-batch is not given: a fixed-batch model's batch; one frame of each stream
    (at most MAX_AUTO_BATCH) where several streams share a model that takes any batch; else 1 (one stream as before).
    """
    if fixed is not None:
        return fixed
    return min(streams, MAX_AUTO_BATCH) if streams > 1 and any_batch else 1
