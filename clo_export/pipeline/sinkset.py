"""The sinks of one run as a unit: annotate a frame once for all of them, write, then close (or abort) every one.

With several streams, ``stream_sinks[i]`` receive only stream ``i``'s frames (its video, its live view cell);
the shared sinks receive every frame (JSON Lines, tagged with the stream by :class:`StreamJsonlSink`). A stream
that ends before the run has its own sinks closed once its last frame is written (:meth:`SinkSet.close_ended`):
its video is complete under its final name while the other streams go on, and stays so whatever the run does next.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clo_export.data.readers import Frame
from clo_export.data.sinks import JsonlSink, Sink, draw_detections, sink_outputs

log = logging.getLogger(__name__)


class SinkSet:
    """Writes each frame to every sink; :meth:`finish` closes them all, or discards their temporary files."""

    def __init__(self, sinks: Sequence[Sink], names: dict[int, str], stream_sinks: Sequence[Sequence[Sink]] = ()):
        self.shared = list(sinks)
        self.per_stream = [list(s) for s in stream_sinks]
        self.sinks = self.shared + [s for group in self.per_stream for s in group]
        self.names = names
        self.non_finite = 0  # detections dropped because a box or score was NaN/Infinity
        self.targets = [self.shared + group for group in self.per_stream] or [self.shared]  # by stream
        self.annotate = [any(s.needs_annotation for s in group) for group in self.targets]
        self.closed: set[int] = set()  # streams whose own sinks are closed already

    def keep_finite(self, frame: Frame, dets: np.ndarray) -> np.ndarray:
        """``dets`` without rows holding NaN/Infinity (counted, the first warned about): outputs stay strict JSON."""
        dets = np.asarray(dets)
        ok = np.isfinite(dets.reshape(len(dets), -1)).all(axis=1) if len(dets) else np.ones(0, bool)
        if ok.all():
            return dets
        if not self.non_finite:
            log.warning(
                "frame %d of %s: the model gave a detection with NaN/Infinity in its box or score; such "
                "detections are dropped and counted (the model or its export is broken)",
                frame.index,
                frame.path,
            )
        self.non_finite += int((~ok).sum())
        return dets[ok]

    def write(self, frame: Frame, dets: np.ndarray) -> bool:
        """Write one frame's detections (drawn once if a sink shows them); True when the user closed a sink."""
        i = frame.stream if self.per_stream else 0
        targets = self.targets[i]
        annotated = draw_detections(frame.image, dets, self.names) if self.annotate[i] else None
        closed = False
        for sink in targets:
            sink.write(frame, dets, annotated)
            closed = closed or getattr(sink, "closed_by_user", False)
        return closed

    def close_ended(self, ended: Sequence[int | None], done: Sequence[int]) -> None:
        """Close the own sinks of every stream that ended (``ended[i]``: frames it yielded in all) whose frames are all
        done (``done[i]``: frames written); a sink that fails to close is aborted, the first error raised."""
        errors = []
        for i, total in enumerate(ended):
            if total is None or i in self.closed or i >= len(self.per_stream) or done[i] < total:
                continue
            self.closed.add(i)
            for sink in self.per_stream[i]:
                try:
                    sink.close()
                except Exception as e:  # the stream's other sinks are still closed
                    sink.abort()
                    errors.append(e)
        if errors:
            raise errors[0]

    def finish(self, ok: bool) -> None:
        """Close every sink (``ok``) or abort every one; all are tried, the first close error is raised. The sinks of a
        stream closed when it ended are left as they are (complete)."""
        first_error = None
        done = {id(s) for i in self.closed for s in self.per_stream[i]}
        for sink in (s for s in self.sinks if id(s) not in done):
            try:
                sink.close() if ok else sink.abort()
            except Exception as e:  # keep closing the others
                first_error = first_error or e
        if first_error is not None and ok:
            raise first_error

    @property
    def outputs(self) -> list[Path]:
        """The files the sinks wrote."""
        return sink_outputs(self.sinks)


class StreamJsonlSink(JsonlSink):
    """JSON Lines of several streams: each record also carries ``stream`` (0-based, in the order given)."""

    def record(self, frame: Frame, dets: np.ndarray) -> dict:
        return {"stream": frame.stream, **super().record(frame, dets)}
