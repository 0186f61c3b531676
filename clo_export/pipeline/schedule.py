"""How the pipeline's stages run: one thread each, joined by small bounded queues, in the source's order.

decode → inference stream(s) → postprocess → encode. Memory stays flat however long the video is,
and decoding/encoding overlap with inference. Given several runners (inference streams, e.g. two
ONNX Runtime CPU sessions) each gets its own inference thread; batches are numbered as they are
taken and put back in order before postprocessing. A stream takes a batch only while fewer than
``ahead + streams`` are between taking and their turn (a semaphore; ``ahead``: the batches that hold
``queue_size`` frames), so a stalled stream cannot make the others pile up finished batches, and the
frames in flight, memory and a live frame's wait, do not grow with the batch size.

:class:`Control` holds the stop flags every stage (and the sequential loop) obeys: stop reading,
hurry (drop what is queued), abort (a stage failed).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from clo_export.backends.base import Runner

_END = object()


class Control:
    """Stop, hurry and abort, shared by every stage (``stop`` may be the source's, so a live source stops waiting)."""

    def __init__(self, stop: threading.Event | None = None) -> None:
        self.stop = stop if stop is not None else threading.Event()  # stop reading; finish what is in flight
        self.hurry = threading.Event()  # a second stop: drop what is queued too
        self.abort = threading.Event()  # a stage failed: every stage ends now
        self.interrupted = False

    def request_stop(self) -> None:
        """Stop reading; finish what is in flight (a second call drops queued frames too)."""
        if self.stop.is_set():
            self.hurry.set()
        self.interrupted = True
        self.stop.set()


class Scheduler:
    """Runs read → infer (one thread per runner) → postprocess → write in threads over bounded queues.

    Stage bodies come from the caller: ``read()`` yields batches, ``infer(batch, runner)`` returns it
    with ``outputs`` set (None once the runner's server has gone), ``post(batch)`` returns the items
    ``write(item)`` takes. Batches need a writable ``seq``.
    """

    def __init__(
        self,
        control: Control,
        runners: Sequence[Runner],
        queue_size: int,
        batch: int,
        live: bool,
    ):
        self.control = control
        self.runners = list(runners)
        self.queue_size, self.batch, self.live = queue_size, batch, live
        self.dropped = 0  # frames dropped to keep up with a live source
        self._errors: list[BaseException] = []
        self._take = threading.Lock()  # taking a batch and numbering it is one step
        self._taken = 0
        self._ahead = max(1, -(-queue_size // batch))  # batches that hold about queue_size frames
        self._slots = threading.Semaphore(self._ahead + len(self.runners))  # batches taken, not yet in order

    def run(
        self,
        read: Callable[[], Iterable[Any]],
        infer: Callable[[Any, Runner], Any],
        post: Callable[[Any], Iterable[Any]],
        write: Callable[[Any], None],
    ) -> None:
        """Start every stage, wait for them all (Ctrl-C requests a stop), re-raise the first stage error."""
        ahead, streams = self._ahead, len(self.runners)
        q_read: queue.Queue = queue.Queue(ahead)
        q_infer: queue.Queue = queue.Queue(ahead + streams)
        q_write: queue.Queue = queue.Queue(max(self.queue_size, self.batch))
        threads = [
            self._thread("clo-decode", lambda: self._read_stage(read, q_read), q_read),
            *(
                self._thread(f"clo-infer-{i}", lambda r=r: self._infer_stage(infer, r, q_read, q_infer), q_infer)
                for i, r in enumerate(self.runners)
            ),
            self._thread("clo-post", lambda: self._post_stage(post, q_infer, q_write), q_write),
            self._thread("clo-encode", lambda: self._write_stage(write, q_write), None),
        ]
        for t in threads:
            t.start()
        for t in threads:
            while t.is_alive():
                try:
                    t.join(timeout=0.1)
                except KeyboardInterrupt:
                    self.control.request_stop()
        if self._errors:
            raise self._errors[0]

    def _put(self, q: queue.Queue, item: object) -> bool:
        while not self.control.abort.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _get(self, q: queue.Queue) -> Any:
        while not self.control.abort.is_set():
            try:
                return q.get(timeout=0.05)
            except queue.Empty:
                continue
        return _END

    def _thread(self, name: str, body: Callable[[], None], out: queue.Queue | None) -> threading.Thread:
        """A daemon thread running ``body``; an error aborts every stage; the end marker goes to ``out`` either way."""

        def run() -> None:
            try:
                body()
            except BaseException as e:  # noqa: BLE001 (re-raised by the main thread)
                self._errors.append(e)
                self.control.abort.set()
            finally:
                if out is not None:
                    self._put(out, _END)

        return threading.Thread(target=run, name=name, daemon=True)

    def _read_stage(self, read: Callable[[], Iterable[Any]], out: queue.Queue) -> None:
        for batch in read():
            if self.live and out.full():  # real time: drop the oldest waiting frame, keep the newest
                try:
                    out.get_nowait()
                    self.dropped += 1
                except queue.Empty:
                    pass
            if not self._put(out, batch):
                return

    def _take_batch(self, inq: queue.Queue) -> Any:
        """The next batch, numbered, once a slot is free; the end marker is put back for the other streams."""
        while not self._slots.acquire(timeout=0.05):
            if self.control.abort.is_set():
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

    def _infer_stage(
        self, infer: Callable[[Any, Runner], Any], runner: Runner, inq: queue.Queue, out: queue.Queue
    ) -> None:
        while (batch := self._take_batch(inq)) is not _END:
            if not self.control.hurry.is_set() and not self._put(out, infer(batch, runner)):
                return

    def _in_order(self, inq: queue.Queue) -> Iterator[Any]:
        """Batches from the inference streams in the order they were taken (until every stream ended)."""
        waiting: dict[int, Any] = {}
        ended = expected = 0
        while ended < len(self.runners):
            item = self._get(inq)
            if item is _END:
                ended += 1
                if self.control.abort.is_set():
                    return
                continue
            waiting[item.seq] = item
            while expected in waiting:
                self._slots.release()
                yield waiting.pop(expected)
                expected += 1

    def _post_stage(self, post: Callable[[Any], Iterable[Any]], inq: queue.Queue, out: queue.Queue) -> None:
        lost = False  # after a batch the runner's server never answered nothing is written, so outputs have no gaps
        for batch in self._in_order(inq):
            lost = lost or batch.outputs is None
            if self.control.hurry.is_set() or lost:
                continue
            for item in post(batch):
                if not self._put(out, item):
                    return

    def _write_stage(self, write: Callable[[Any], None], inq: queue.Queue) -> None:
        while (item := self._get(inq)) is not _END:
            if not self.control.hurry.is_set():
                write(item)
