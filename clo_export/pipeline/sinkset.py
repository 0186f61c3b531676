"""The sinks of one run as a unit: annotate a frame once for all of them, write, then close (or abort) every one."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clo_export.data.sinks import Sink, draw_detections, sink_outputs
from clo_export.data.readers import Frame


class SinkSet:
    """Writes each frame to every sink; :meth:`finish` closes them all, or discards their temporary files."""

    def __init__(self, sinks: Sequence[Sink], names: dict[int, str]):
        self.sinks = list(sinks)
        self.names = names
        self.annotate = any(s.needs_annotation for s in self.sinks)

    def write(self, frame: Frame, dets: np.ndarray) -> bool:
        """Write one frame's detections (drawn once if a sink shows them); True when the user closed a sink."""
        annotated = draw_detections(frame.image, dets, self.names) if self.annotate else None
        closed = False
        for sink in self.sinks:
            sink.write(frame, dets, annotated)
            closed = closed or getattr(sink, "closed_by_user", False)
        return closed

    def finish(self, ok: bool) -> None:
        """Close every sink (``ok``) or abort every one; all are tried, the first close error is raised."""
        first_error = None
        for sink in self.sinks:
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
