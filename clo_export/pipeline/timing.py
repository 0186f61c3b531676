"""Per-stage latency of the pipeline: a thread-safe timer per stage and its summary."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

STAGES = ("decode", "preprocess", "inference", "postprocess", "check", "encode")
STATS_WINDOW = 20000  # latencies kept per stage (a sliding window, so long streams stay flat in memory)


@dataclass(frozen=True)
class StageStats:
    """Per-frame latency of one stage in milliseconds."""

    name: str
    count: int
    mean_ms: float
    p50_ms: float
    p95_ms: float


class StageTimer:
    """Per-frame latencies of one stage (a batch's time is split evenly over its frames); thread-safe."""

    def __init__(self, name: str, window: int = STATS_WINDOW):
        self.name = name
        self.samples: deque[float] = deque(maxlen=window)
        self.count = 0
        self._lock = threading.Lock()  # inference streams share one timer

    def add(self, seconds: float, frames: int = 1) -> None:
        per = seconds / max(frames, 1)
        with self._lock:
            self.samples.extend([per] * frames)
            self.count += frames

    @contextmanager
    def timed(self, frames: int = 1) -> Iterator[None]:
        """Time the block and add it, split over ``frames``."""
        t0 = time.perf_counter()
        yield
        self.add(time.perf_counter() - t0, frames)

    def stats(self) -> StageStats:
        if not self.samples:
            return StageStats(self.name, 0, 0.0, 0.0, 0.0)
        ms = np.asarray(self.samples) * 1e3
        return StageStats(
            self.name, self.count, float(ms.mean()), float(np.percentile(ms, 50)), float(np.percentile(ms, 95))
        )


@dataclass(frozen=True)
class StreamStats:
    """One of several streams: frames written, FPS, drops, reconnects, latency from frame read to written (ms)."""

    stream: int
    source: str
    frames: int
    fps: float
    dropped: int
    reconnects: int
    p50_ms: float
    p95_ms: float


class StreamTimer:
    """Frames written and read→written latency of one stream (fed by the one thread that writes)."""

    def __init__(self, window: int = STATS_WINDOW):
        self.latency: deque[float] = deque(maxlen=window)
        self.frames = 0
        self.last = 0.0  # time.perf_counter() of the last frame written

    def add(self, read_at: float | None) -> None:
        """A frame of this stream was written (``read_at``: when it was read)."""
        self.last = time.perf_counter()
        self.frames += 1
        if read_at is not None:
            self.latency.append(self.last - read_at)

    def stats(self, stream: int, source: str, started: float, dropped: int, reconnects: int) -> StreamStats:
        """The summary; FPS counts from ``started`` (the run's start) to this stream's last frame."""
        ms = np.asarray(self.latency) * 1e3 if self.latency else np.zeros(1)
        span = self.last - started
        return StreamStats(
            stream,
            source,
            self.frames,
            self.frames / span if self.frames and span > 0 else 0.0,
            dropped,
            reconnects,
            float(np.percentile(ms, 50)),
            float(np.percentile(ms, 95)),
        )
