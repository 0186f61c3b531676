"""The sinks of one run as a unit: annotate a frame once for all of them, write, then close (or abort) every one."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from clo_export.data.sinks import Sink, draw_detections, sink_outputs
from clo_export.data.readers import Frame

log = logging.getLogger(__name__)


class SinkSet:
    """Writes each frame to every sink; :meth:`finish` closes them all, or discards their temporary files."""

    def __init__(self, sinks: Sequence[Sink], names: dict[int, str]):
        self.sinks = list(sinks)
        self.names = names
        self.annotate = any(s.needs_annotation for s in self.sinks)
        self.non_finite = 0  # detections dropped because a box or score was NaN/Infinity

    def keep_finite(self, frame: Frame, dets: np.ndarray) -> np.ndarray:
        """``dets`` without rows holding NaN/Infinity (counted, the first warned about): outputs stay strict JSON."""
        dets = np.asarray(dets)
        ok = np.isfinite(dets.reshape(len(dets), -1)).all(axis=1) if len(dets) else np.ones(0, bool)
        if ok.all():
            return dets
        if not self.non_finite:
            log.warning("frame %d of %s: the model gave a detection with NaN/Infinity in its box or score; such "
                        "detections are dropped and counted (the model or its export is broken)", frame.index,
                        frame.path)
        self.non_finite += int((~ok).sum())
        return dets[ok]

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
