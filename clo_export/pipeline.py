"""The inference pipeline: decode → preprocess+infer → postprocess (+check) → annotate+encode.

Each stage runs in its own thread and hands work on through small bounded queues, so memory
stays flat however long the video is and decoding/encoding overlap with inference. Given
several runners (inference streams, e.g. two ONNX Runtime CPU sessions), each gets its own
inference thread; batches are numbered as they are taken and put back in order before
postprocessing, so outputs keep the source's order. A stream takes a batch only while fewer than
``queue_size + streams`` are between taking and their turn, so a stalled stream cannot make the
others pile up finished batches. The same stage functions also run as a plain
sequential loop (``threaded=False``, first runner only), which the benchmark uses as its
baseline. Library code: no printing; the CLI renders :class:`RunResult`.

Stopping: ``request_stop()`` (Ctrl-C in the CLI) stops reading; frames already read are finished
and every sink is closed, so the output video is complete and playable. A second request also
drops the frames still queued. An error in any stage aborts all stages, discards the sinks'
temporary files and is re-raised.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from clo_export.artifacts import NMS_OUTPUTS, ModelInfo
from clo_export.backends.base import Runner, RunnerGone
from clo_export.compare import TOLERANCES, Report, Tolerance, compare_outputs, detection_agreement
from clo_export.data.preprocess import LetterboxInfo, preprocess, scale_boxes
from clo_export.data.sinks import Sink, draw_detections, sink_outputs
from clo_export.data.sources import Frame, Source
from clo_export.errors import CloExportError
from clo_export.postprocess import detections_from_nms_outputs, nms

log = logging.getLogger(__name__)

STAGES = ("decode", "preprocess", "inference", "postprocess", "check", "encode")
STATS_WINDOW = 20000  # latencies kept per stage (a sliding window, so long streams stay flat in memory)
_END = object()


@dataclass(frozen=True)
class InferOptions:
    """Postprocessing thresholds and how frames are batched and checked."""

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    batch: int = 1
    check_every: int = 1
    queue_size: int = 4

    def validate(self) -> None:
        """Refuse bad values before any work starts."""
        if not (0 <= self.conf <= 1 and 0 <= self.iou <= 1):
            raise CloExportError(f"--conf {self.conf} and --iou {self.iou} must lie in [0, 1]")
        if self.max_det < 1 or self.batch < 1 or self.check_every < 1 or self.queue_size < 1:
            raise CloExportError("--max-det, --infer-batch and --check-every must be at least 1")


# ---------------------------------------------------------------------------------------------- stats


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

    def stats(self) -> StageStats:
        if not self.samples:
            return StageStats(self.name, 0, 0.0, 0.0, 0.0)
        ms = np.asarray(self.samples) * 1e3
        return StageStats(self.name, self.count, float(ms.mean()), float(np.percentile(ms, 50)), float(np.percentile(ms, 95)))


# ------------------------------------------------------------------------------------ postprocessing


class Postprocessor:
    """Model outputs → per-frame (n, 6) [x1, y1, x2, y2, conf, cls] in original-frame pixels."""

    def __init__(self, info: ModelInfo, opts: InferOptions):
        self.info = info
        self.opts = opts

    def letterboxed(self, outputs: dict[str, np.ndarray], n: int) -> list[np.ndarray]:
        """Detections of the first ``n`` images in letterboxed-input pixels."""
        o = self.opts
        if all(k in outputs for k in NMS_OUTPUTS):
            dets = detections_from_nms_outputs({k: outputs[k][:n] for k in NMS_OUTPUTS})
            out = []
            for d in dets:
                d = d[d[:, 4] >= o.conf]  # the baked threshold already applied; a higher --conf filters more
                if o.classes is not None:
                    d = d[np.isin(d[:, 5].astype(int), o.classes)]
                out.append(d[: o.max_det].astype(np.float32, copy=False))
            return out
        pred = outputs["output0"] if "output0" in outputs else next(iter(outputs.values()))
        return nms(pred[:n], o.conf, o.iou, o.classes, o.agnostic, max_det=o.max_det)

    def __call__(self, outputs: dict[str, np.ndarray], infos: list[LetterboxInfo]) -> list[np.ndarray]:
        return [scale_boxes(d, info) if len(d) else d for d, info in zip(self.letterboxed(outputs, len(infos)), infos)]


# ------------------------------------------------------------------------------------------- checking


@dataclass
class CheckedFrame:
    """One compared frame kept for the HTML report (the frames that disagree most)."""

    index: int
    path: str
    f1: float
    max_abs: float
    image: np.ndarray
    ref_dets: np.ndarray
    test_dets: np.ndarray


class Checker:
    """Runs a PyTorch reference on chosen frames and compares its outputs with the model's.

    Raw-output models get per-field tensor statistics and detection agreement (compare.py);
    models with in-graph NMS are judged on detections only. ``keep_worst`` frames with the lowest
    detection F1 (then largest difference) are kept with their images for the HTML report.
    """

    def __init__(self, reference: Runner, info: ModelInfo, opts: InferOptions, min_f1: float | None = None,
                 keep_worst: int = 0):
        self.reference = reference
        self.info = info
        self.opts = opts
        precision = info.precision if info.precision in TOLERANCES else "fp32"
        tol = TOLERANCES[precision]
        self.tolerance: Tolerance = replace(tol, min_f1=min_f1) if min_f1 is not None else tol
        self.precision = precision
        self.reports: list[Report] = []
        self.keep_worst = keep_worst
        self._worst: list[tuple] = []
        self._tie = itertools.count()
        self.post = Postprocessor(info, opts)

    def _ref_dets(self, ref: dict[str, np.ndarray]) -> np.ndarray:
        i, o = self.info, self.opts
        if i.nms:  # compare with what the graph's NMS was built for
            return nms(ref["output0"], i.nms_conf if i.nms_conf is not None else o.conf,
                       i.nms_iou if i.nms_iou is not None else o.iou, max_det=i.nms_max_det or o.max_det)[0]
        return nms(ref["output0"], o.conf, o.iou, max_det=o.max_det)[0]

    def observe(self, frame: Frame, x: np.ndarray, test: dict[str, np.ndarray], lb: LetterboxInfo) -> Report:
        """Compare one frame: ``x`` its (1, 3, H, W) input, ``test`` the model's outputs for it."""
        ref = self.reference.infer({"images": x})
        test32 = {k: np.asarray(v, dtype=np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating) else v
                  for k, v in test.items()}
        ref_dets = self._ref_dets(ref)
        if all(k in test for k in NMS_OUTPUTS):
            test_dets = detections_from_nms_outputs(test32)[0]
            report = Report(self.precision, self.tolerance, detections=detection_agreement([ref_dets], [test_dets]))
        else:
            report = compare_outputs(ref, test32, self.precision, self.opts.conf, self.opts.iou, self.tolerance)
            test_dets = self.post.letterboxed(test32, 1)[0]
        self.reports.append(report)
        if self.keep_worst:
            f1 = report.detections.f1 if report.detections else 1.0
            max_abs = max((s.max_abs for s in report.tensors.values()), default=0.0)
            item = ((-(1 - f1), -max_abs), next(self._tie),
                    CheckedFrame(frame.index, frame.path, f1, max_abs, frame.image,
                                 scale_boxes(ref_dets, lb) if len(ref_dets) else ref_dets,
                                 scale_boxes(test_dets, lb) if len(test_dets) else test_dets))
            if len(self._worst) < self.keep_worst:
                heapq.heappush(self._worst, item)
            elif item[0] < self._worst[0][0]:  # heap keeps the best of the worst on top
                heapq.heapreplace(self._worst, item)
        return report

    @property
    def report(self) -> Report | None:
        """All compared frames, accumulated (None when no frame was checked)."""
        return Report.accumulate(self.reports) if self.reports else None

    def worst(self) -> list[CheckedFrame]:
        """The kept frames, most disagreeing first."""
        return [item[2] for item in sorted(self._worst, key=lambda t: (t[0], t[1]))]

    def frame_f1s(self) -> list[float]:
        """Per checked frame detection F1, in order."""
        return [r.detections.f1 if r.detections else 1.0 for r in self.reports]


# ------------------------------------------------------------------------------------------- pipeline


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
    """Source → runner(s) → postprocess → sinks, threaded (default) or as a sequential loop.

    ``runner`` is one active runner or several (parallel inference streams of the same model).
    """

    def __init__(self, source: Source, runner: Runner | Sequence[Runner], info: ModelInfo,
                 sinks: list[Sink] | None = None, opts: InferOptions = InferOptions(), checker: Checker | None = None,
                 on_frame: Callable[[int, int], None] | None = None):
        opts.validate()
        self.runners = [runner] if isinstance(runner, Runner) else list(runner)
        if not self.runners:
            raise CloExportError("Pipeline needs at least one runner")
        self.source, self.runner, self.info = source, self.runners[0], info
        self.sinks = list(sinks or [])
        self.opts = opts
        self.checker = checker
        self.on_frame = on_frame  # (frames written, detections in this frame), from the writer thread
        self.post = Postprocessor(info, opts)
        self.timers = {name: StageTimer(name) for name in STAGES}
        self._stop = threading.Event()
        self._hurry = threading.Event()
        self._abort = threading.Event()
        self._errors: list[BaseException] = []
        self.interrupted = False
        self.gone: str | None = None
        self.frames = self.detections = self.dropped = self.checked = 0
        self.annotate = any(s.needs_annotation for s in self.sinks)
        self.batch = 1
        self.input_name = "images"
        self._pad: int | None = None
        self.streams = 1
        self._take = threading.Lock()  # taking a batch and numbering it is one step
        self._taken = 0
        self._slots = threading.Semaphore(opts.queue_size + len(self.runners))  # batches taken, not yet in order

    # ---- control
    def request_stop(self) -> None:
        """Stop reading; finish what is in flight (a second call drops queued frames too)."""
        if self._stop.is_set():
            self._hurry.set()
        self.interrupted = True
        self._stop.set()

    # ---- stage bodies (shared by both modes)
    def _frames(self) -> Iterator[Frame]:
        """Frames from the source, decode time recorded; a KeyboardInterrupt inside the source stops the run."""
        it = iter(self.source)
        while not self._stop.is_set():
            t0 = time.perf_counter()
            try:
                frame = next(it)
            except StopIteration:
                return
            except KeyboardInterrupt:
                self.request_stop()
                return
            self.timers["decode"].add(time.perf_counter() - t0)
            yield frame

    def _preprocess(self, frame: Frame) -> tuple[np.ndarray, LetterboxInfo]:
        t0 = time.perf_counter()
        x, lb = preprocess(frame.image, self.info.imgsz)
        self.timers["preprocess"].add(time.perf_counter() - t0)
        return x, lb

    def _infer(self, batch: _Batch, runner: Runner | None = None) -> _Batch:
        x = np.concatenate(batch.inputs, axis=0) if len(batch.inputs) > 1 else batch.inputs[0]
        if self._pad and len(x) < self._pad:  # a fixed-batch model gets a zero-padded last batch
            x = np.concatenate([x, np.zeros((self._pad - len(x), *x.shape[1:]), x.dtype)], axis=0)
        t0 = time.perf_counter()
        batch.outputs = (runner or self.runner).infer({self.input_name: x})
        self.timers["inference"].add(time.perf_counter() - t0, len(batch.frames))
        return batch

    def _infer_or_stop(self, batch: _Batch, runner: Runner | None = None) -> _Batch:
        """Infer a batch; once the runner's server has gone, stop reading and pass batches on without outputs."""
        if self.gone is None:
            try:
                return self._infer(batch, runner)
            except RunnerGone as e:
                self.gone = self.gone or str(e)
                self._stop.set()
        return batch

    def _postprocess(self, batch: _Batch) -> list[tuple[Frame, np.ndarray]]:
        t0 = time.perf_counter()
        dets = self.post(batch.outputs, batch.letterbox)
        self.timers["postprocess"].add(time.perf_counter() - t0, len(batch.frames))
        if self.checker is not None:
            for i, frame in enumerate(batch.frames):
                if frame.index % self.opts.check_every == 0 and not self._hurry.is_set():
                    t1 = time.perf_counter()
                    self.checker.observe(frame, batch.inputs[i], {k: v[i:i + 1] for k, v in batch.outputs.items()},
                                         batch.letterbox[i])
                    self.timers["check"].add(time.perf_counter() - t1)
                    self.checked += 1
        return list(zip(batch.frames, dets))

    def _write(self, frame: Frame, dets: np.ndarray) -> None:
        t0 = time.perf_counter()
        annotated = draw_detections(frame.image, dets, self.info.names) if self.annotate else None
        for sink in self.sinks:
            sink.write(frame, dets, annotated)
            if getattr(sink, "closed_by_user", False):
                self.request_stop()
        self.timers["encode"].add(time.perf_counter() - t0)
        self.frames += 1
        self.detections += len(dets)
        if self.on_frame is not None:
            self.on_frame(self.frames, len(dets))

    # ---- setup / teardown
    def _configure_batch(self) -> None:
        spec = self.runner.input_specs()[0]
        self.input_name = spec.name
        fixed = spec.shape[0] if spec.shape else None
        want = self.opts.batch
        if self.source.live and want > 1:
            log.info("live source: --infer-batch %d ignored (frames are processed as they arrive)", want)
            want = 1
        if fixed is not None and want not in (1, fixed):
            raise CloExportError(f"the model takes a fixed batch of {fixed}; use --infer-batch {fixed} or 1, "
                                 "or export it with --dynamic-batch")
        self.batch = fixed if fixed is not None and not self.source.live else want
        self._pad = fixed

    def _finish_sinks(self, ok: bool) -> None:
        first_error = None
        for sink in self.sinks:
            try:
                sink.close() if ok else sink.abort()
            except Exception as e:  # keep closing the others
                first_error = first_error or e
        if first_error is not None and ok:
            raise first_error

    def _result(self, seconds: float) -> RunResult:
        return RunResult(
            frames=self.frames, skipped=self.source.skipped, dropped=self.dropped, detections=self.detections,
            seconds=seconds, stages={n: t.stats() for n, t in self.timers.items() if t.count},
            interrupted=self.interrupted, check=self.checker.report if self.checker else None,
            checked_frames=self.checked, outputs=sink_outputs(self.sinks), batch=self.batch, streams=self.streams,
            gone=self.gone,
        )

    def run(self, threaded: bool = True) -> RunResult:
        """Process the whole source (or until stopped); sinks are closed either way."""
        self._configure_batch()
        t0 = time.perf_counter()
        ok = False
        try:
            if threaded:
                self._run_threaded()
            else:
                self._run_sequential()
            ok = True
        finally:
            self._finish_sinks(ok)
        return self._result(time.perf_counter() - t0)

    # ---- sequential
    def _batches(self, frames: Iterator[Frame]) -> Iterator[_Batch]:
        batch = _Batch([], [], [])
        for frame in frames:
            x, lb = self._preprocess(frame)
            batch.frames.append(frame), batch.inputs.append(x), batch.letterbox.append(lb)
            if len(batch.frames) == self.batch:
                yield batch
                batch = _Batch([], [], [])
        if batch.frames:
            yield batch

    def _run_sequential(self) -> None:
        try:
            for batch in self._batches(self._frames()):
                if self._infer_or_stop(batch).outputs is None:
                    break
                for frame, dets in self._postprocess(batch):
                    self._write(frame, dets)
                if self._hurry.is_set():
                    break
        except KeyboardInterrupt:
            self.request_stop()

    # ---- threaded
    def _put(self, q: queue.Queue, item: object) -> bool:
        while not self._abort.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> object:
        while not self._abort.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        return _END

    def _guard(self, body: Callable[[], None], out: queue.Queue | None) -> Callable[[], None]:
        def run() -> None:
            try:
                body()
            except BaseException as e:  # noqa: BLE001 (re-raised by the main thread)
                self._errors.append(e)
                self._abort.set()
            finally:
                if out is not None:
                    self._put(out, _END)
        return run

    def _read_stage(self, out: queue.Queue) -> None:
        for batch in self._batches(self._frames()):
            if self.source.live and out.full():  # real time: drop the oldest waiting frame, keep the newest
                try:
                    out.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
            if not self._put(out, batch):
                return

    def _take_batch(self, inq: queue.Queue) -> object:
        """The next batch, numbered, once a slot is free; the end marker is put back for the other streams."""
        while not self._slots.acquire(timeout=0.05):
            if self._abort.is_set():
                return _END
        with self._take:
            batch = self._get(inq)
            if batch is _END:
                self._slots.release()
                self._put(inq, _END)
                return _END
            batch.seq = self._taken
            self._taken += 1
            return batch

    def _infer_stage(self, runner: Runner, inq: queue.Queue, out: queue.Queue) -> None:
        while (batch := self._take_batch(inq)) is not _END:
            if not self._hurry.is_set() and not self._put(out, self._infer_or_stop(batch, runner)):
                return

    def _in_order(self, inq: queue.Queue, streams: int) -> Iterator[_Batch]:
        """Batches from the inference streams in the order they were taken (until every stream ended)."""
        waiting: dict[int, _Batch] = {}
        ended = expected = 0
        while ended < streams:
            item = self._get(inq)
            if item is _END:
                ended += 1
                if self._abort.is_set():
                    return
                continue
            waiting[item.seq] = item
            while expected in waiting:
                self._slots.release()
                yield waiting.pop(expected)
                expected += 1

    def _post_stage(self, inq: queue.Queue, out: queue.Queue, streams: int) -> None:
        lost = False  # after a batch the runner's server never answered nothing is written, so outputs have no gaps
        for batch in self._in_order(inq, streams):
            lost = lost or batch.outputs is None
            if self._hurry.is_set() or lost:
                continue
            for item in self._postprocess(batch):
                if not self._put(out, item):
                    return

    def _write_stage(self, inq: queue.Queue) -> None:
        while (item := self._get(inq)) is not _END:
            if not self._hurry.is_set():
                self._write(*item)

    def _run_threaded(self) -> None:
        size = self.opts.queue_size
        self.streams = len(self.runners)
        q_read = queue.Queue(max(1, size // self.batch))
        q_infer = queue.Queue(max(1, size // self.batch) + self.streams)
        q_write: queue.Queue = queue.Queue(size * self.batch)
        infer = [threading.Thread(target=self._guard(lambda r=r: self._infer_stage(r, q_read, q_infer), q_infer),
                                  name=f"clo-infer-{i}", daemon=True) for i, r in enumerate(self.runners)]
        threads = [
            threading.Thread(target=self._guard(lambda: self._read_stage(q_read), q_read), name="clo-decode", daemon=True),
            *infer,
            threading.Thread(target=self._guard(lambda: self._post_stage(q_infer, q_write, self.streams), q_write),
                             name="clo-post", daemon=True),
            threading.Thread(target=self._guard(lambda: self._write_stage(q_write), None), name="clo-encode", daemon=True),
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                try:
                    t.join(timeout=0.1)
                except KeyboardInterrupt:
                    self.request_stop()
        if self._errors:
            err = self._errors[0]
            raise err
