"""The Pipeline: what each stage does to a batch of frames, and running them threaded or as one loop."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clo_export.artifacts import ModelInfo
from clo_export.backends.base import Runner, RunnerGone
from clo_export.backends.streams import auto_batch
from clo_export.data.live import StreamLost
from clo_export.data.preprocess import LetterboxInfo, preprocess
from clo_export.data.readers import Frame, Source
from clo_export.data.sinks import Sink
from clo_export.data.streams import MultiSource
from clo_export.errors import CloExportError
from clo_export.pipeline.check import Checker
from clo_export.pipeline.options import InferOptions
from clo_export.pipeline.schedule import Control, Scheduler
from clo_export.pipeline.sinkset import SinkSet
from clo_export.pipeline.timing import STAGES, StageStats, StageTimer, StreamStats, StreamTimer
from clo_export.postprocess import Postprocessor
from clo_export.report import Report

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    """What a run did: frames, timings, detections, check outcome, files written."""

    frames: int
    skipped: int
    dropped: int
    detections: int
    seconds: float
    stages: dict[str, StageStats]
    interrupted: bool = False
    check: Report | None = None
    checked_frames: int = 0
    outputs: list[Path] = field(default_factory=list)
    batch: int = 1
    streams: int = 1
    gone: str | None = None  # why the runner's server stopped answering (the run ended there)
    lost: str | None = None  # why the live source was given up (the run ended there)
    reconnects: int = 0  # times a lost live source came back
    offline: float = 0.0  # seconds the live source delivered no frames before coming back
    non_finite: int = 0  # detections dropped because a box or score was NaN/Infinity
    per_stream: list[StreamStats] = field(default_factory=list)  # several sources: one entry each
    batch_sizes: dict[int, int] = field(default_factory=dict)  # frames per inference -> inferences

    @property
    def fps(self) -> float:
        """End-to-end frames per second (first read to last write)."""
        return self.frames / self.seconds if self.seconds > 0 else 0.0


@dataclass
class _Batch:
    frames: list[Frame]
    inputs: list[np.ndarray]
    letterbox: list[LetterboxInfo]
    outputs: dict[str, np.ndarray] | None = None
    seq: int = 0  # order in which an inference stream took it


class Pipeline:
    """Source → runner(s) → postprocess (+check) → sinks, threaded (default) or as a sequential loop.

    ``runner`` is one active runner or several (parallel inference streams of the same model); the
    sequential loop uses the first.
    """

    def __init__(
        self,
        source: Source | MultiSource,
        runner: Runner | Sequence[Runner],
        info: ModelInfo,
        sinks: list[Sink] | None = None,
        opts: InferOptions = InferOptions(),
        checker: Checker | None = None,
        on_frame: Callable[[int, int], None] | None = None,
        stream_sinks: Sequence[Sequence[Sink]] = (),
    ):
        opts.validate()
        self.runners = [runner] if isinstance(runner, Runner) else list(runner)
        if not self.runners:
            raise CloExportError("Pipeline needs at least one runner")
        self.source, self.info, self.opts, self.checker = source, info, opts, checker
        self.sinks = SinkSet(sinks or [], info.names, stream_sinks)
        self.multi = source if isinstance(source, MultiSource) else None  # several sources: stats per stream
        n = len(self.multi.sources) if self.multi is not None else 0
        self.stream_timers = [StreamTimer() for _ in range(n)]
        self.batch_sizes: dict[int, int] = {}
        self.started = 0.0  # time.perf_counter() when run() began
        self.on_frame = on_frame  # (frames written, detections in this frame), from the writer thread
        self.post = Postprocessor(opts)
        self.timers = {name: StageTimer(name) for name in STAGES}
        self.control = Control(source.stop)
        self.gone: str | None = None
        self.lost: str | None = None
        self.frames = self.detections = self.dropped = self.checked = 0
        self.batch, self.streams, self.input_name, self._pad = 1, 1, "", None

    def request_stop(self) -> None:
        """Stop reading; finish what is in flight (a second call drops queued frames too)."""
        self.control.request_stop()

    def run(self, threaded: bool = True) -> RunResult:
        """Process the whole source (or until stopped); sinks are closed either way."""
        self._configure_batch()
        t0 = self.started = time.perf_counter()
        ok = False
        try:
            self._run_threaded() if threaded else self._run_sequential()
            ok = True
        finally:
            self.sinks.finish(ok)
        return RunResult(
            frames=self.frames,
            skipped=self.source.skipped,
            detections=self.detections,
            dropped=self.dropped if self.multi is None else sum(self.multi.dropped),
            seconds=time.perf_counter() - t0,
            stages={n: t.stats() for n, t in self.timers.items() if t.count},
            interrupted=self.control.interrupted,
            check=self.checker.report if self.checker else None,
            checked_frames=self.checked,
            outputs=self.sinks.outputs,
            batch=self.batch,
            streams=self.streams,
            gone=self.gone,
            lost=self.lost,
            reconnects=self.source.reconnects,
            offline=self.source.offline,
            non_finite=self.sinks.non_finite,
            per_stream=self._stream_stats(t0),
            batch_sizes=dict(sorted(self.batch_sizes.items())),
        )

    def _stream_stats(self, t0: float) -> list[StreamStats]:
        """Per-stream frames, FPS, drops (each live stream drops its own oldest frames), reconnects and latency."""
        if self.multi is None:
            return []
        return [
            t.stats(i, s.spec, t0, self.multi.dropped[i], s.reconnects)
            for i, (t, s) in enumerate(zip(self.stream_timers, self.multi.sources))
        ]

    def stream_progress(self) -> list[tuple[int, float, int]]:
        """Several streams, while running: frames written, FPS since the start and drops of each (empty for one)."""
        if self.multi is None:
            return []
        span = time.perf_counter() - self.started
        return [
            (t.frames, t.frames / span if span > 0 else 0.0, self.multi.dropped[i])
            for i, t in enumerate(self.stream_timers)
        ]

    def _configure_batch(self) -> None:
        """Input name and batch size from the model: a fixed batch is used (padded), a dynamic one is --infer-batch
        (not given: :func:`auto_batch`)."""
        spec = self.runners[0].input_specs()[0]
        self.input_name = spec.name
        fixed = spec.shape[0] if spec.shape else None
        one_live = self.source.live and self.multi is None  # several live streams are batched across them
        streams = len(self.multi.sources) if self.multi is not None else 1
        want = 1 if one_live else self.opts.batch or auto_batch(streams, fixed, self.runners[0].any_batch)
        if one_live and (self.opts.batch or 1) > 1:
            log.info("live source: --infer-batch %d ignored (frames are processed as they arrive)", self.opts.batch)
        if fixed is not None and want not in (1, fixed):
            raise CloExportError(
                f"the model takes a fixed batch of {fixed}; use --infer-batch {fixed} or 1, "
                "or export it with --dynamic-batch"
            )
        self.batch = fixed if fixed is not None and not one_live else want
        self._pad = fixed

    # ---- stage bodies (shared by both modes)
    def _batches(self) -> Iterator[_Batch]:
        """Preprocessed batches of frames from the source; a KeyboardInterrupt inside the source stops the run, a live
        source given up ends it (``lost``) with the frames read so far finished and written."""
        it = iter(self.source)
        batch = _Batch([], [], [])
        while not self.control.stop.is_set():
            try:
                with self.timers["decode"].timed():
                    frame = next(it)
            except StopIteration:
                break
            except StreamLost as e:
                self.lost = str(e)
                break
            except KeyboardInterrupt:
                self.request_stop()
                break
            with self.timers["preprocess"].timed():
                x, lb = preprocess(frame.image, self.info.imgsz)
            batch.frames.append(frame), batch.inputs.append(x), batch.letterbox.append(lb)
            if len(batch.frames) == self.batch:
                yield batch
                batch = _Batch([], [], [])
        if batch.frames:
            yield batch

    def _infer(self, batch: _Batch, runner: Runner) -> _Batch:
        """Infer a batch; once the runner's server has gone, stop reading and pass batches on without outputs."""
        if self.gone is not None:
            return batch
        x = np.concatenate(batch.inputs, axis=0) if len(batch.inputs) > 1 else batch.inputs[0]
        if self._pad and len(x) < self._pad:  # a fixed-batch model gets a zero-padded last batch
            x = np.concatenate([x, np.zeros((self._pad - len(x), *x.shape[1:]), x.dtype)], axis=0)
        try:
            with self.timers["inference"].timed(len(batch.frames)):
                batch.outputs = runner.infer({self.input_name: x})
        except RunnerGone as e:
            self.gone = self.gone or str(e)
            self.control.stop.set()
        return batch

    def _postprocess(self, batch: _Batch) -> list[tuple[Frame, np.ndarray]]:
        self.batch_sizes[len(batch.frames)] = self.batch_sizes.get(len(batch.frames), 0) + 1
        with self.timers["postprocess"].timed(len(batch.frames)):
            dets = self.post(batch.outputs, batch.letterbox)
        if self.checker is not None:
            for i, frame in enumerate(batch.frames):
                if frame.index % self.opts.check_every == 0 and not self.control.hurry.is_set():
                    with self.timers["check"].timed():
                        self.checker.observe(
                            frame,
                            {self.input_name: batch.inputs[i]},
                            {k: v[i : i + 1] for k, v in batch.outputs.items()},
                            batch.letterbox[i],
                        )
                    self.checked += 1
        return list(zip(batch.frames, dets))

    def _write(self, frame: Frame, dets: np.ndarray) -> None:
        dets = self.sinks.keep_finite(frame, dets)
        with self.timers["encode"].timed():
            if self.sinks.write(frame, dets):
                self.request_stop()
        self.frames += 1
        self.detections += len(dets)
        if self.stream_timers:
            self.stream_timers[frame.stream].add(frame.read_at)
            # a stream that ended: its video complete now (several streams never drop after the merge)
            self.sinks.close_ended(self.multi.ended, [t.frames for t in self.stream_timers])
        if self.on_frame is not None:
            self.on_frame(self.frames, len(dets))

    # ---- the two ways to run them
    def _run_sequential(self) -> None:
        try:
            for batch in self._batches():
                if self._infer(batch, self.runners[0]).outputs is None:
                    break
                for frame, dets in self._postprocess(batch):
                    self._write(frame, dets)
                if self.control.hurry.is_set():
                    break
        except KeyboardInterrupt:
            self.request_stop()

    def _run_threaded(self) -> None:
        self.streams = len(self.runners)
        scheduler = Scheduler(self.control, self.runners, self.opts.queue_size, self.batch, self.source.live)
        try:
            scheduler.run(self._batches, self._infer, self._postprocess, lambda item: self._write(*item))
        finally:
            self.dropped = scheduler.dropped
