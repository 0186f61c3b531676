"""Live sources (webcam index, stream URL): opening with a time limit that Ctrl-C/SIGTERM can cut short, and the
reconnect rule for a stream that stops delivering frames.

A lost stream is retried with backoff (:data:`BACKOFF_FIRST` doubling to :data:`BACKOFF_MAX`) for the
run's ``reconnect`` seconds, counted from its last frame; frames resume when the camera returns. A stream
given up raises :class:`StreamLost`, whose text is the one line the CLI prints.
"""

from __future__ import annotations

import os
import threading
import time
from typing import Optional, Union

import cv2

from clo_export.errors import CloExportError

DEFAULT_RECONNECT = 60.0  # seconds a lost live stream is retried before the run gives it up (0: not retried)
OPEN_TIMEOUT = 10.0  # seconds one attempt to open a stream may take (FFmpeg backend)
READ_TIMEOUT = 2.5  # no packet for this long and FFmpeg gives a read up (a stall is seen after about two of them)
# seconds between reconnect attempts: 0.5, 1, 2, 2, …; a camera that is back is seen within BACKOFF_MAX + ~2 s (open)
BACKOFF_FIRST, BACKOFF_MAX = 0.5, 2.0


class StreamLost(CloExportError):
    """A live stream stopped delivering frames and did not come back within the reconnect time."""


def _open(capture: Union[str, int], timeout: float, api: Optional[int] = None) -> cv2.VideoCapture:
    """cv2.VideoCapture for a webcam index or a stream URL (FFmpeg with open/read time limits where OpenCV has it), or
    for a pipeline with ``api`` (cv2.CAP_GSTREAMER: a closed connection ends its reads; OpenCV sets it no limits)."""
    if api is not None:
        return cv2.VideoCapture(capture, api)
    registry = getattr(cv2, "videoio_registry", None)
    ffmpeg = registry is not None and registry.hasBackend(cv2.CAP_FFMPEG) and hasattr(cv2, "CAP_PROP_READ_TIMEOUT_MSEC")
    if isinstance(capture, int) or not ffmpeg:  # a webcam, or an OpenCV without FFmpeg: the backend's own limits
        return cv2.VideoCapture(capture)
    os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")  # FFmpeg's own lines would break the one-line report
    params = [
        cv2.CAP_PROP_OPEN_TIMEOUT_MSEC,
        int(timeout * 1000),
        cv2.CAP_PROP_READ_TIMEOUT_MSEC,
        int(READ_TIMEOUT * 1000),
    ]
    return cv2.VideoCapture(capture, cv2.CAP_FFMPEG, params)


def open_capture(
    capture: Union[str, int],
    timeout: float = OPEN_TIMEOUT,
    stop: Optional[threading.Event] = None,
    api: Optional[int] = None,
) -> Optional[cv2.VideoCapture]:
    """An opened capture, or None when it does not open within ``timeout`` seconds.

    The attempt runs in a helper thread, so Ctrl-C/SIGTERM and ``stop`` end the wait at once (the abandoned
    attempt ends by its own time limit and releases what it opened).
    """
    from clo_export.data.sinks import quiet_opencv

    quiet_opencv()
    lock, box = threading.Lock(), {}  # box: "cap" once opened, "abandoned" once nobody waits for it

    def attempt() -> None:
        cap = _open(capture, timeout, api)
        with lock:
            box["cap"] = cap
            if box.get("abandoned"):
                cap.release()

    worker = threading.Thread(target=attempt, name="clo-open", daemon=True)
    worker.start()
    try:
        while worker.is_alive() and not (stop is not None and stop.is_set()):
            worker.join(0.05)
    finally:
        with lock:
            cap = box.get("cap")
            if cap is None or (stop is not None and stop.is_set()):
                box["abandoned"] = True
                if cap is not None:
                    cap.release()
                cap = None
    if cap is not None and not cap.isOpened():
        cap.release()
        return None
    return cap


class Reconnector:
    """The reconnect rule for one live source: when a lost stream is retried, when it is given up, what it cost."""

    def __init__(
        self, spec: str, capture: Union[str, int], seconds: float, stop: threading.Event, api: Optional[int] = None
    ):
        self.spec, self.capture, self.seconds, self.stop, self.api = spec, capture, seconds, stop, api
        self.reconnects = 0  # times frames resumed after a loss
        self.offline = 0.0  # seconds without frames between a loss and the frames resuming
        self._down_since: Optional[float] = None

    def resumed(self) -> Optional[float]:
        """A frame arrived: the seconds the stream was down (None when it was not)."""
        if self._down_since is None:
            return None
        gap = time.monotonic() - self._down_since
        self._down_since = None
        self.reconnects += 1
        self.offline += gap
        return gap

    def reopen(self, why: str, started: float, frames: int, last_frame: float) -> Optional[cv2.VideoCapture]:
        """A new capture after a loss (``why``; the last frame came at ``last_frame``), retried with backoff until
        ``seconds`` after that frame; None when stopped; StreamLost when given up."""
        if self._down_since is None:
            self._down_since = last_frame
        deadline = self._down_since + self.seconds
        delay, last = BACKOFF_FIRST, why
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._lost(why, last, started, frames)
            if self.stop.wait(min(delay, left)):
                return None
            delay = min(2 * delay, BACKOFF_MAX)
            cap = open_capture(
                self.capture, min(OPEN_TIMEOUT, max(deadline - time.monotonic(), 0.5)), self.stop, self.api
            )
            if cap is not None:
                return cap
            if self.stop.is_set():
                return None
            last = "the camera does not answer (cannot open it)"

    def _lost(self, why: str, last: str, started: float, frames: int) -> StreamLost:
        assert self._down_since is not None
        ran = self._down_since - started
        retried = (
            f"retried for {self.seconds:g} s (--reconnect), last error: {last}"
            if self.seconds > 0
            else "not retried (--reconnect 0)"
        )
        earlier = f", {self.reconnects} earlier reconnect(s)" if self.reconnects else ""
        return StreamLost(
            f"stream '{self.spec}' lost after {ran:.1f} s ({frames} frames received{earlier}): {why}; "
            f"{retried}; outputs closed and complete up to its last frame"
        )
