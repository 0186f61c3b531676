"""GStreamer sources through OpenCV (JetPack's OpenCV is built with it): a pipeline string given as SOURCE, and the
H.264 decode pipelines ``--decoder gst|nvv4l2`` builds for video files and RTSP cameras.

The builders are pure: they return the pipeline text :func:`cv2.VideoCapture` runs with ``cv2.CAP_GSTREAMER``.
``nvv4l2`` decodes on a Jetson's hardware decoder (``nvv4l2decoder``, ``nvvidconv`` out of NVMM memory);
``gst`` is the same pipeline with FFmpeg's software decoder (``avdec_h264``, gstreamer1.0-libav).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from clo_export.errors import CloExportError


class Decoder(str, Enum):
    """Who decodes video files and RTSP cameras: OpenCV's own backend (FFmpeg), or a GStreamer pipeline."""

    opencv = "opencv"
    gst = "gst"
    nvv4l2 = "nvv4l2"


DEFAULT_DECODER = Decoder.opencv
RTSP_LATENCY_MS = 200  # rtspsrc's jitter buffer: NVIDIA's and peers' camera examples use 200 ms
RTSP_PREFIXES = ("rtsp://", "rtsps://")
# H.264 decode to BGR, per decoder (nvvidconv copies out of NVMM; it gives BGRx, videoconvert makes BGR)
DECODE = {
    Decoder.nvv4l2: "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR",
    Decoder.gst: "avdec_h264 ! videoconvert ! video/x-raw,format=BGR",
}
# the demuxer of each container that carries H.264
DEMUX = {".mp4": "qtdemux", ".mov": "qtdemux", ".m4v": "qtdemux", ".mkv": "matroskademux", ".avi": "avidemux"}
FILE_SINK = "appsink sync=false"  # as fast as decoded, never a dropped frame
LIVE_SINK = "appsink drop=true max-buffers=1 sync=false"  # a camera: only the newest frame waits


def quote(value: str) -> str:
    """``value`` as one gst-launch property value: double-quoted, with ``\\`` and ``"`` escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def is_pipeline(text: str) -> bool:
    """A GStreamer pipeline given as SOURCE: elements joined by `` ! ``, the last one an appsink."""
    if " ! " not in text:
        return False
    last = text.rsplit("!", 1)[1].split()
    return bool(last) and last[0] == "appsink"


def is_live_pipeline(text: str) -> bool:
    """Whether a pipeline SOURCE is a camera or stream (frames may be dropped, the source reconnected): no filesrc."""
    return not any(e in text.split() for e in ("filesrc", "multifilesrc"))


def decode_pipeline(source: str, decoder: Decoder | str) -> str:
    """The GStreamer pipeline that decodes ``source`` (an H.264 video file or an rtsp:// URL) with ``decoder``;
    ``gst`` and ``nvv4l2`` differ only in the decode step."""
    decoder = Decoder(decoder)
    if decoder is Decoder.opencv:
        raise ValueError("--decoder opencv builds no pipeline")
    decode = DECODE[decoder]
    if source.lower().startswith(RTSP_PREFIXES):
        return (
            f"rtspsrc location={quote(source)} latency={RTSP_LATENCY_MS} ! rtph264depay ! h264parse ! {decode} ! "
            f"{LIVE_SINK}"
        )
    demux = DEMUX.get(Path(source).suffix.lower())
    if demux is None:
        raise CloExportError(
            f"--decoder {decoder.value} builds H.264 pipelines for {', '.join(sorted(DEMUX))} files and rtsp:// "
            f"cameras, not '{source}'; drop --decoder, or pass your own GStreamer pipeline (… ! appsink) as SOURCE"
        )
    return f"filesrc location={quote(source)} ! {demux} ! h264parse ! {decode} ! {FILE_SINK}"


def gstreamer_problem() -> str | None:
    """Why this OpenCV cannot run GStreamer pipelines (None when it can)."""
    import cv2

    registry = getattr(cv2, "videoio_registry", None)
    if registry is not None and registry.hasBackend(cv2.CAP_GSTREAMER):
        return None
    return (
        "this OpenCV has no GStreamer (PyPI's opencv-python wheels never do); on Jetson use JetPack's OpenCV "
        "(a venv made with --system-site-packages, and pip uninstall opencv-python opencv-python-headless), "
        "on Debian/Ubuntu python3-opencv"
    )


def require_gstreamer(what: str) -> None:
    """Raise the one-line error when ``what`` needs GStreamer and this OpenCV lacks it."""
    problem = gstreamer_problem()
    if problem is not None:
        raise CloExportError(f"{what} needs OpenCV with GStreamer, but {problem}")
