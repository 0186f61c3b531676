"""Frame sources for inference: a video file, an image, a folder or glob of images, a webcam, a stream URL.

Every source yields :class:`Frame` objects (index, timestamp, BGR image, where it came from).
An unreadable source is a CloExportError before the first frame; a corrupt frame inside a
video or an unreadable image in a folder is skipped and counted in ``source.skipped``. A file ends
at its last frame; a live source (webcam, stream URL) that stops is reconnected or, given up, raises
:class:`~clo_export.data.live.StreamLost` (see :mod:`clo_export.data.live`).
"""

from __future__ import annotations

import glob
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from clo_export.data.files import (
    IMAGE_EXTS,
    VIDEO_EXTS,
    check_pixels,
    is_pattern,
    path_kind,
    read_image,
    refuse_special,
)
from clo_export.data.gstreamer import (
    DEFAULT_DECODER,
    Decoder,
    decode_pipeline,
    is_live_pipeline,
    is_pipeline,
    require_gstreamer,
)
from clo_export.data.live import DEFAULT_RECONNECT, READ_TIMEOUT, Reconnector, open_capture
from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

STREAM_PREFIXES = ("rtsp://", "rtsps://", "rtmp://", "http://", "https://", "udp://", "tcp://")
MAX_BAD_READS = 30  # consecutive failed reads before a video is taken as ended (a stream as lost)
DEFAULT_FPS = 30.0


@dataclass
class Frame:
    """One decoded frame: running index, seconds since the start (None for still images), BGR pixels."""

    index: int
    timestamp: float | None
    image: np.ndarray
    path: str  # the file (image sources) or the source string
    stream: int = 0  # which of several sources (0-based, in the order given)
    read_at: float | None = None  # time.perf_counter() when read (several sources: latency per stream)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height)."""
        return self.image.shape[1], self.image.shape[0]


class Source:
    """Base class: iterate for frames; ``kind``, ``fps``, ``size``, ``total`` describe the source."""

    kind = "source"
    live = False  # webcam/stream: frames arrive in real time and may be dropped

    def __init__(self, spec: str, limit: int | None = None, stop: threading.Event | None = None):
        self.spec = spec
        self.limit = limit
        self.skipped = 0  # corrupt frames / unreadable images
        self.fps: float | None = None
        self.size: tuple[int, int] | None = None  # (width, height) for videos and streams
        self.total: int | None = None  # frames expected, when known
        self.stop = stop if stop is not None else threading.Event()  # set by the owner: stop waiting and end
        self.reconnects = 0  # live sources: times frames resumed after the stream was lost
        self.offline = 0.0  # live sources: seconds without frames between those losses and the frames resuming

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        n = 0
        for frame in self.frames():
            if self.limit is not None and n >= self.limit:
                return
            n += 1
            yield frame

    def expected(self) -> int | None:
        """Frames this run will see, when known (for a progress bar)."""
        if self.total is None:
            return self.limit
        return self.total if self.limit is None else min(self.total, self.limit)

    def describe(self) -> str:
        size = f" {self.size[0]}x{self.size[1]}" if self.size else ""
        fps = f" @ {self.fps:g} fps" if self.fps else ""
        total = f", {self.total} frames" if self.total is not None else ""
        return f"{self.kind} {self.spec}{size}{fps}{total}"


def valid_image(img: np.ndarray | None) -> bool:
    """A non-empty 3-channel uint8 image."""
    return img is not None and img.ndim == 3 and img.shape[2] == 3 and img.size > 0 and img.dtype == np.uint8


class VideoSource(Source):
    """A video file or a live capture (webcam index or stream URL) through cv2.VideoCapture; ``api``
    cv2.CAP_GSTREAMER: ``capture`` is a GStreamer pipeline (its frame count is not known ahead)."""

    kind = "video"

    def __init__(
        self,
        spec: str,
        limit: int | None = None,
        capture: str | int | None = None,
        live: bool = False,
        reconnect: float = DEFAULT_RECONNECT,
        stop: threading.Event | None = None,
        api: int | None = None,
        kind: str | None = None,
    ):
        super().__init__(spec, limit, stop)
        self.capture = spec if capture is None else capture
        self.live = live
        self.api = api
        self.kind = kind or ("video" if not live else ("webcam" if isinstance(capture, int) else "stream"))
        self._reconnect = Reconnector(spec, self.capture, reconnect, self.stop, api) if live else None
        self._cap = self._open()
        self._opened = time.monotonic()  # live timestamps count from here
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else DEFAULT_FPS
        w, h = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (w, h) if w > 0 and h > 0 else None
        count = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT)) if not live else 0
        self.total = count if count > 0 else None
        if not live and self.total is None and api is None:
            self._cap.release()
            raise CloExportError(
                f"'{spec}' opens but holds no video frames; check the file or re-encode it as mp4 (H.264)"
            )

    def _open(self) -> cv2.VideoCapture:
        if self.live:
            cap = open_capture(self.capture, stop=self.stop, api=self.api)
        elif self.api is not None:
            from clo_export.data.sinks import quiet_opencv

            quiet_opencv()
            cap = cv2.VideoCapture(self.capture, self.api)
        else:
            cap = cv2.VideoCapture(self.capture)
        if cap is None or not cap.isOpened():
            if cap is not None:
                cap.release()
            if self.api is not None:
                pipeline = "" if self.capture == self.spec else f" (pipeline: {self.capture})"
                raise CloExportError(
                    f"GStreamer cannot open '{self.spec}'{pipeline}; check "
                    + ("the URL and the network, then " if self.live else "")
                    + "the pipeline with gst-launch-1.0 (fakesink in place of appsink), and gst-inspect-1.0 "
                    "ELEMENT for a missing element (nvv4l2decoder: only on a Jetson)"
                )
            if self.kind == "webcam":
                raise CloExportError(
                    f"cannot open webcam {self.capture}; check it is connected and not in use "
                    "(ls /dev/video*), or pass a video file"
                )
            if self.kind == "stream":
                raise CloExportError(
                    f"cannot open stream '{self.spec}'; check the URL, the network and that "
                    "OpenCV was built with FFmpeg"
                )
            raise CloExportError(
                f"OpenCV cannot read video '{self.spec}' (corrupt, truncated or an unknown codec); "
                "check the file or re-encode it: ffmpeg -i IN -c:v libx264 OUT.mp4"
            )
        return cap

    def frames(self) -> Iterator[Frame]:
        if self.live:
            yield from self._live_frames()
            return
        cap = self._cap
        position, decoded, failed = 0, 0, 0  # failed: consecutive reads that gave no frame
        try:
            while True:
                ok, img = cap.read()
                if ok and valid_image(img):
                    self.skipped += failed
                    failed = 0
                    yield Frame(position, position / self.fps, img, self.spec)
                    decoded += 1
                elif (self.total is not None and position >= self.total) or failed >= MAX_BAD_READS:
                    break
                else:
                    failed += 1
                position += 1
        finally:
            cap.release()
        if decoded == 0:
            raise CloExportError(
                f"no frame of '{self.spec}' could be decoded; check the file or re-encode it as mp4 (H.264)"
            )
        missing = (self.total or 0) - decoded - self.skipped
        if missing > 1 and (self.limit is None or decoded < self.limit):
            # the header promised more frames than the file holds (truncated or corrupt tail)
            log.warning(
                "%s: decoding stopped at frame %d of %d; %d frames unreadable",
                self.spec,
                decoded + self.skipped,
                self.total,
                missing,
            )
            self.skipped += missing

    def _live_frames(self) -> Iterator[Frame]:
        """Frames as they arrive, stamped in seconds since the source was opened (monotonic, so a gap shows).

        A lost stream is reopened by the reconnect rule until it delivers again, is given up (StreamLost) or
        ``stop`` is set.
        """
        assert self._reconnect is not None
        t0, index, bad = self._opened, 0, 0  # bad: frames in a row that decoded to no image
        last = t0  # when the last frame came
        try:
            while not self.stop.is_set():
                t_read = time.monotonic()
                ok, img = self._cap.read()
                if ok and valid_image(img):
                    last = time.monotonic()
                    gap = self._reconnect.resumed()
                    if gap is not None:
                        self.reconnects, self.offline = self._reconnect.reconnects, self._reconnect.offline
                        log.warning("%s: frames resumed after %.1f s", self.spec, gap)
                    bad = 0
                    yield Frame(index, last - t0, img, self.spec)
                    index += 1
                    continue
                if ok and bad < MAX_BAD_READS:
                    self.skipped, bad = self.skipped + 1, bad + 1
                    continue
                now = time.monotonic()
                why = (
                    f"no frame for {now - last:.1f} s"
                    if now - t_read >= 0.9 * READ_TIMEOUT
                    else f"{MAX_BAD_READS} unreadable frames in a row"
                    if ok
                    else "the stream ended"
                )
                if self._reconnect.seconds > 0:
                    log.warning(
                        "%s: %s; retrying until %g s after its last frame", self.spec, why, self._reconnect.seconds
                    )
                self._cap.release()
                cap = self._reconnect.reopen(why, t0, index, last)
                if cap is None:
                    return
                self._cap, bad = cap, 0
        finally:
            self._cap.release()

    def close(self) -> None:
        self._cap.release()


class ImageSource(Source):
    """Still images: one file, a folder (recursive) or a glob; unreadable files are skipped and counted."""

    kind = "images"

    def __init__(
        self,
        spec: str,
        files: list[Path],
        limit: int | None = None,
        max_pixels: int | None = None,
        stop: threading.Event | None = None,
    ):
        super().__init__(spec, limit, stop)
        self.files = files
        self.total = len(files)
        self.max_pixels = max_pixels
        for path in files[:limit]:  # before any work: no image is a FIFO or a decompression bomb
            refuse_special("image", path)
            check_pixels(path, max_pixels)

    def frames(self) -> Iterator[Frame]:
        index = 0
        for path in self.files:
            img = read_image(path, self.max_pixels)
            if not valid_image(img):
                log.warning("skipping unreadable image %s", path)
                self.skipped += 1
                continue
            yield Frame(index, None, img, str(path))
            index += 1
        if index == 0:
            raise CloExportError(
                f"none of the {len(self.files)} image(s) in '{self.spec}' could be read; "
                "check the files (jpg, png, bmp, tif, webp)"
            )


def _image_files(spec: str) -> list[Path] | None:
    """Image files named by a folder or glob (None when ``spec`` is neither); videos there are left out."""
    path = Path(spec)
    if is_pattern(spec):
        found = [Path(p) for p in glob.glob(spec, recursive=True)]
    elif path.is_dir():
        found = [p for p in path.rglob("*") if p.is_file()]
    else:
        return None
    videos = [p for p in found if p.suffix.lower() in VIDEO_EXTS]
    if videos:
        log.warning(
            "%s: leaving out %d video(s) (%s…); pass each video as its own source", spec, len(videos), videos[0].name
        )
    return sorted(p for p in found if p.suffix.lower() in IMAGE_EXTS)


def is_webcam(text: str) -> bool:
    """A webcam index: ASCII digits that do not name an existing path (a folder '2024' is a folder)."""
    return text.isascii() and text.isdecimal() and path_kind(text) == "missing"


def open_source(
    spec: str | Path | int,
    limit: int | None = None,
    reconnect: float = DEFAULT_RECONNECT,
    max_pixels: int | None = None,
    stop: threading.Event | None = None,
    decoder: Decoder | str = DEFAULT_DECODER,
) -> Source:
    """The source named by ``spec``: webcam index, stream URL, video, image, folder, glob or GStreamer pipeline.

    ``reconnect``: seconds a live source that stops is retried before it is given up (0: not retried).
    An existing path wins over a webcam index (a folder named 2024) and over a glob ('shot[1].jpg');
    a FIFO, socket or device is refused (reading one blocks): a live stream is a URL or a webcam index.
    ``stop``: the event that ends the source (several sources share one).
    ``decoder`` gst/nvv4l2: video files and rtsp:// URLs are decoded by the GStreamer pipeline it builds.
    """
    if limit is not None and limit < 1:
        raise CloExportError(f"--limit {limit} must be at least 1")
    decoder = Decoder(decoder)
    text = str(spec)
    if is_pipeline(text):
        require_gstreamer("a GStreamer pipeline SOURCE")
        live = is_live_pipeline(text)
        return VideoSource(
            text, limit, live=live, reconnect=reconnect, stop=stop, api=cv2.CAP_GSTREAMER, kind="pipeline"
        )
    refuse_special("source", text)
    if is_webcam(text):
        return VideoSource(text, limit, capture=int(text), live=True, reconnect=reconnect, stop=stop)
    if text.lower().startswith(STREAM_PREFIXES):
        path_part = text.split("?", 1)[0].lower()
        if path_part.startswith(("http://", "https://")) and Path(path_part).suffix in IMAGE_EXTS:
            raise CloExportError(f"'{text}' looks like an image URL; download it first and pass the file")
        if decoder is not Decoder.opencv and path_part.startswith(("rtsp://", "rtsps://")):
            return _decoded(text, decoder, limit, reconnect, stop, live=True)
        return VideoSource(text, limit, capture=text, live=True, reconnect=reconnect, stop=stop)
    files = _image_files(text)
    if files is not None:
        if not files:
            raise CloExportError(f"'{text}' holds no images ({', '.join(sorted(IMAGE_EXTS))})")
        return ImageSource(text, files, limit, max_pixels, stop)
    path = Path(text)
    if not path.exists():
        raise CloExportError(
            f"source '{text}' does not exist; pass a video, an image, a folder, a glob, "
            "a webcam index (0) or a stream URL (rtsp://…)"
        )
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTS:
        return ImageSource(text, [path], limit, max_pixels, stop)
    if suffix in VIDEO_EXTS:
        if decoder is not Decoder.opencv:
            return _decoded(text, decoder, limit, reconnect, stop, live=False)
        return VideoSource(text, limit, stop=stop)
    raise CloExportError(
        f"'{text}' is neither an image ({', '.join(sorted(IMAGE_EXTS))}) nor a video ({', '.join(sorted(VIDEO_EXTS))})"
    )


def _decoded(
    spec: str, decoder: Decoder, limit: int | None, reconnect: float, stop: threading.Event | None, live: bool
) -> VideoSource:
    """A video file or RTSP camera read through the GStreamer pipeline ``decoder`` builds for it."""
    pipeline = decode_pipeline(spec, decoder)
    require_gstreamer(f"--decoder {decoder.value}")
    return VideoSource(spec, limit, capture=pipeline, live=live, reconnect=reconnect, stop=stop, api=cv2.CAP_GSTREAMER)


STREAMS_SUFFIX = ".streams"  # YOLOv5's list of sources: one per line, '#' starts a comment line


def read_streams_file(path: str | Path) -> list[str]:
    """The sources listed in a ``.streams`` file: one per line; blank lines and lines starting with '#' are left out."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise CloExportError(
            f"cannot read the streams file '{path}' ({e}); give a text file, one source per line"
        ) from e
    specs = [line.strip() for line in text.splitlines()]
    specs = [s for s in specs if s and not s.startswith("#")]
    if not specs:
        raise CloExportError(
            f"the streams file '{path}' lists no source; write one source (file, webcam index, URL) per line"
        )
    return specs


MAX_STREAMS = 64  # sources in one run


def expand_sources(specs: list[str]) -> list[str]:
    """The sources named on the command line, each ``.streams`` file replaced by the sources it lists."""
    if not specs:
        raise CloExportError("no SOURCE given; pass a video, images, a webcam index, a stream URL or a .streams file")
    out: list[str] = []
    for spec in specs:
        is_list = spec.lower().endswith(STREAMS_SUFFIX) and Path(spec).is_file()
        out.extend(read_streams_file(spec) if is_list else [spec])
    if len(out) > MAX_STREAMS:  # one reader thread each: the input must not decide how many threads we take
        raise CloExportError(
            f"{len(out)} sources given; clo-infer reads at most {MAX_STREAMS} streams in one process "
            "(one reader thread each): split them over several runs"
        )
    return out
