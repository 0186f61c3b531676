"""Several sources in one run: one reader thread per source, their frames merged round-robin for one model.

Each frame is tagged with its ``stream`` (0-based, in the order given) and the time it was read. A file
stream waits for its turn (files never drop a frame, and equal-length files advance together); a live
stream keeps only its newest frame (drop-oldest, counted in ``dropped[stream]``) and is skipped while it
has none, so a slow or reconnecting camera never holds the others up. A stream that ends leaves the
others running. A live stream given up (:class:`~clo_export.data.live.StreamLost`) ends too while the
others go on; once all have ended the merged iteration raises one StreamLost naming every lost stream,
so the run finishes and writes what it read, then exits 1.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from clo_export.data import readers
from clo_export.data.gstreamer import DEFAULT_DECODER, Decoder
from clo_export.data.live import DEFAULT_RECONNECT, StreamLost
from clo_export.data.readers import Frame, Source

log = logging.getLogger(__name__)

FILE_BUFFER = 4  # frames read ahead per file stream
POLL = 0.005  # seconds to wait for a live frame when no stream has one
_END = object()


class MultiSource:
    """``sources`` read at once and merged round-robin; they share ``stop`` (the event each was opened with)."""

    kind = "streams"

    def __init__(self, sources: Sequence[Source], stop: threading.Event):
        self.sources = list(sources)
        self.stop = stop
        self.spec = ", ".join(s.spec for s in self.sources)
        self.live = all(s.live for s in self.sources)  # with a file among them nothing is dropped after the merge
        self.dropped = [0] * len(self.sources)  # frames of each live stream replaced by a newer one before their turn
        self.lost: list[str] = []  # why each lost live stream was given up
        self._quit = threading.Event()  # the merge was abandoned: readers end
        self._queues = [queue.Queue(1 if s.live else FILE_BUFFER) for s in self.sources]

    @property
    def skipped(self) -> int:
        return sum(s.skipped for s in self.sources)

    @property
    def reconnects(self) -> int:
        return sum(s.reconnects for s in self.sources)

    @property
    def offline(self) -> float:
        return sum(s.offline for s in self.sources)

    def expected(self) -> int | None:
        """Frames of all streams together, when every one knows its count."""
        counts = [s.expected() for s in self.sources]
        return None if any(c is None for c in counts) else sum(counts)  # type: ignore[misc]

    def _ending(self) -> bool:
        return self.stop.is_set() or self._quit.is_set()

    def _put(self, i: int, item: object) -> None:
        """Queue ``item`` for stream ``i``: a live frame replaces the waiting one (a drop); the rest wait for room."""
        q = self._queues[i]
        if self.sources[i].live and isinstance(item, Frame):
            try:
                q.get_nowait()
                self.dropped[i] += 1
            except queue.Empty:
                pass
        while not self._quit.is_set():  # the end (or an error) waits behind the last frame
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def _read(self, i: int) -> None:
        """Reader thread of stream ``i``: its frames, then the end marker or the error that ended it."""
        end: object = _END
        try:
            for frame in self.sources[i]:
                frame.stream, frame.read_at = i, time.perf_counter()
                self._put(i, frame)
                if self._ending():
                    break
        except StreamLost as e:
            self.lost.append(f"stream {i}: {e}")
            log.warning("stream %d given up (%s); the other streams go on", i, self.sources[i].spec)
        except BaseException as e:  # noqa: BLE001 (re-raised by the merge)
            end = e
        self._put(i, end)

    def __iter__(self) -> Iterator[Frame]:
        threads = [
            threading.Thread(target=self._read, args=(i,), name=f"clo-read-{i}", daemon=True)
            for i in range(len(self.sources))
        ]
        for t in threads:
            t.start()
        try:
            yield from self._merge()
        finally:
            self._quit.set()
            for t in threads:
                t.join(timeout=1.0)
        if self.lost:
            raise StreamLost("; ".join(self.lost))

    def _merge(self) -> Iterator[Frame]:
        """Frames in round-robin order over the streams still running (a live one without a frame is passed over)."""
        active = list(range(len(self.sources)))
        turn = 0
        while active:
            i = active[turn % len(active)]
            item = self._take(i, wait=not self.sources[i].live or len(active) == 1)
            if item is None:
                turn += 1
                if all(self.sources[j].live for j in active) and turn % len(active) == 0:
                    time.sleep(POLL)  # a full round found no live frame
                continue
            if item is _END:
                active.remove(i)
                continue
            if isinstance(item, BaseException):
                raise item
            turn += 1
            yield item  # type: ignore[misc]

    def _take(self, i: int, wait: bool) -> object:
        """Stream ``i``'s next item; None when it has none now (``wait``: block until it has, or the run stops)."""
        q = self._queues[i]
        while True:
            try:
                return q.get(timeout=0.05) if wait else q.get_nowait()
            except queue.Empty:
                if not wait or self._quit.is_set():
                    return None


def open_sources(
    specs: Sequence[str],
    limit: int | None = None,
    reconnect: float = DEFAULT_RECONNECT,
    max_pixels: int | None = None,
    decoder: Decoder | str = DEFAULT_DECODER,
) -> Source | MultiSource:
    """One source as :func:`open_source` opens it, or several opened at once (cameras' open times overlap, so none
    piles up frames while the next one opens) and merged; if one fails, those opened are closed and its error raised."""
    if len(specs) == 1:
        return readers.open_source(specs[0], limit, reconnect, max_pixels=max_pixels, decoder=decoder)
    stop = threading.Event()

    def attempt(spec: str) -> Source | BaseException:
        try:
            return readers.open_source(spec, limit, reconnect, max_pixels=max_pixels, stop=stop, decoder=decoder)
        except BaseException as e:  # noqa: BLE001 (raised below, after the others are closed)
            return e

    with ThreadPoolExecutor(max_workers=min(len(specs), 16), thread_name_prefix="clo-open") as pool:
        opened = list(pool.map(attempt, specs))
    errors = [o for o in opened if isinstance(o, BaseException)]
    if errors:
        for o in opened:
            if isinstance(o, Source) and hasattr(o, "close"):
                o.close()
        raise errors[0]
    return MultiSource(opened, stop)  # type: ignore[arg-type]
