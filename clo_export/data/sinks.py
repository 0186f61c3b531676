"""Where results go: annotated video (H.264 through PyAV, else OpenCV's mp4v), annotated images, JSON Lines, a window.

Files are written under a temporary name beside the target and renamed by ``close()``, so a
finished (or Ctrl-C'd) run leaves complete files and a crashed one leaves none. ``abort()``
removes the temporary file instead. A JSON Lines target that is a character device or pipe
(``/dev/stdout``, a FIFO) is written directly, line by line; a link is kept and its file replaced.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from clo_export.data.readers import Frame
from clo_export.errors import CloExportError
from clo_export.fileio import (
    IMAGE_SUFFIXES,
    json_text,
    make_dirs,
    output_target,
    part_name,
    remove_dirs,
    remove_stale_parts,
    write_bytes_atomic,
    write_error,
)

log = logging.getLogger(__name__)

FULL_BYTES = 1 << 20  # a target with less free space than this is full: stop before writing a broken file

# YOLOv5's Colors palette (hex), indexed by class id
PALETTE = (
    "FF3838",
    "FF9D97",
    "FF701F",
    "FFB21D",
    "CFD231",
    "48F90A",
    "92CC17",
    "3DDB86",
    "1A9334",
    "00D4BB",
    "2C99A8",
    "00C2FF",
    "344593",
    "6473FF",
    "0018EC",
    "8438FF",
    "520085",
    "CB38FF",
    "FF95C8",
    "FF37C7",
)


_BGR = tuple((int(h[4:6], 16), int(h[2:4], 16), int(h[0:2], 16)) for h in PALETTE)


def color(cls: int) -> tuple[int, int, int]:
    """BGR colour of a class."""
    return _BGR[int(cls) % len(_BGR)]


def draw_detections(img: np.ndarray, dets: np.ndarray, names: dict[int, str], copy: bool = True) -> np.ndarray:
    """Boxes and 'name score' labels of (n, 6) [x1, y1, x2, y2, conf, cls] detections drawn on a BGR image."""
    out = img.copy() if copy else img
    lw = max(round(sum(out.shape[:2]) / 2 * 0.003), 1)
    for x1, y1, x2, y2, conf, cls in np.asarray(dets, dtype=np.float32).reshape(-1, 6).tolist():
        c = color(int(cls))
        p1, p2 = (int(x1), int(y1)), (int(x2), int(y2))
        cv2.rectangle(out, p1, p2, c, lw, cv2.LINE_8)  # axis-aligned: anti-aliasing only costs time
        label = f"{names.get(int(cls), int(cls))} {conf:.2f}"
        scale = lw / 3
        tw, th = cv2.getTextSize(label, 0, scale, max(lw - 1, 1))[0]
        above = p1[1] - th - 3 >= 0
        q2 = (p1[0] + tw, p1[1] - th - 3 if above else p1[1] + th + 3)
        cv2.rectangle(out, p1, q2, c, -1, cv2.LINE_8)
        cv2.putText(
            out,
            label,
            (p1[0], p1[1] - 2 if above else p1[1] + th + 2),
            0,
            scale,
            (255, 255, 255),
            max(lw - 1, 1),
            cv2.LINE_AA,
        )
    return out


def temp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path`` that keeps its suffix; stale ones of stopped runs are removed first."""
    remove_stale_parts(path)
    return part_name(path, path.suffix)


def make_folder(path: Path, label: str) -> list:
    """mkdir -p with a one-line error (a file in the way, read-only filesystem, no permission); the folders made."""
    if path.exists() and not path.is_dir():
        raise CloExportError(f"{label} '{path}' is not a folder; choose another path")
    try:
        return make_dirs(path)
    except OSError as e:
        raise write_error(path, e) from e


def quiet_opencv() -> None:
    """Silence OpenCV's own write warnings: sinks check the results and report failures in one line."""
    try:
        cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    except AttributeError:  # a build without cv2.utils.logging (Debian's 4.6): the older spelling, 2 = ERROR
        if hasattr(cv2, "setLogLevel"):
            cv2.setLogLevel(2)


def free_bytes(folder: Path) -> int | None:
    """Bytes an unprivileged writer may still use in ``folder``'s filesystem (None when unknown)."""
    try:
        st = os.statvfs(folder)
    except (OSError, AttributeError):
        return None
    return st.f_bavail * st.f_frsize


def video_problem(path: Path) -> str | None:
    """Why the finished file at ``path`` is not a playable video (None when OpenCV reads a frame of it)."""
    if not path.is_file() or path.stat().st_size == 0:
        return "the file is empty"
    cap = cv2.VideoCapture(str(path))
    try:
        if not cap.isOpened():
            return "OpenCV cannot open the result (no index/moov atom)"
        ok, _ = cap.read()
        return None if ok else "the result holds no readable frame"
    finally:
        cap.release()


class Sink:
    """Receives every frame with its detections; ``close()`` finishes, ``abort()`` discards."""

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def abort(self) -> None:
        self.close()

    needs_annotation = False
    outputs: list[Path] = []


# containers PyAV writes H.264 into (FFmpeg format names); .avi stays OpenCV's MJPG
H264_FORMATS = {".mp4": "mp4", ".mov": "mov", ".mkv": "matroska"}
# libx264 settings: the encoder must keep up with live cameras on a Jetson's CPU. Measured (2 shared cores, 3 rounds,
# docs/infer.md): 'ultrafast' at CRF 23 takes 1.6x mp4v's time a frame (640x480: 7.9 vs 5.0 ms; 1920x1080: 45 vs
# 25 ms) for a file 0.64-0.8x mp4v's; 'veryfast' 2.3-3x mp4v's time for 0.22-0.28x its size; 'medium' far slower
X264_OPTIONS = {"preset": "ultrafast", "crf": "23"}
_said: set = set()  # fallback lines already logged: each once per process, however many streams are saved


def h264_problem(suffix: str) -> str | None:
    """Why an annotated video in this container cannot be H.264 here (None when it can)."""
    if suffix.lower() not in H264_FORMATS:
        return f"{suffix} is not an H.264 container here (.mp4, .mov, .mkv)"
    try:
        av = importlib.import_module("av")
    except ImportError:
        return "PyAV is not installed; for H.264 (plays in browsers): pip install av"
    if "libx264" not in av.codecs_available:
        return "this PyAV has no libx264; for H.264 install PyAV's wheel: pip install --force-reinstall av"
    return None


class OpenCVWriter:
    """cv2.VideoWriter with the codec ``code`` (mp4v, MJPG)."""

    def __init__(self, path: Path, code: str, fps: float, size: tuple[int, int]):
        self.codec = code
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*code), fps, size)

    def isOpened(self) -> bool:  # noqa: N802 (cv2.VideoWriter's name)
        return self.writer.isOpened()

    def write(self, img: np.ndarray) -> None:
        self.writer.write(img)

    def release(self) -> None:
        self.writer.release()


class H264Writer:
    """H.264 (libx264, yuv420p) through PyAV in the container ``fmt``; frame k is shown at k/fps seconds.

    yuv420p needs an even width and height: an odd one loses its last pixel column/row (as OpenCV's mp4v does).
    """

    codec = "h264"

    def __init__(self, path: Path, fmt: str, fps: float, size: tuple[int, int]):
        av = importlib.import_module("av")
        self.errors = (OSError, av.FFmpegError)
        self.frame_type = av.VideoFrame
        # +faststart: the index goes to the front, so a browser plays the file while it loads
        options = {"movflags": "+faststart"} if fmt in ("mp4", "mov") else {}
        try:
            self.container = av.open(str(path), "w", format=fmt, options=options)
            self.stream = self.container.add_stream(
                "libx264", rate=Fraction(fps).limit_denominator(1001), options=dict(X264_OPTIONS)
            )
        except self.errors as e:
            self.container = None
            raise OSError(getattr(e, "errno", None), str(e)) from e
        self.even = (size[0] - size[0] % 2, size[1] - size[1] % 2)
        self.stream.width, self.stream.height, self.stream.pix_fmt = self.even[0], self.even[1], "yuv420p"
        self.frames = 0
        self.failed = False  # a mux failed (full disk): FFmpeg's muxer must not be used again (PyAV segfaults)

    def isOpened(self) -> bool:  # noqa: N802 (as OpenCVWriter)
        return self.container is not None

    def write(self, img: np.ndarray) -> None:
        img = np.ascontiguousarray(img[: self.even[1], : self.even[0]])
        frame = self.frame_type.from_ndarray(img, format="bgr24")
        frame.pts = self.frames
        self.frames += 1
        try:
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
        except self.errors:
            self.failed = True
            raise

    def release(self) -> None:
        """Flush the encoder and finish the file (the index is written here); OSError when that fails."""
        if self.container is None:
            return
        container, self.container = self.container, None
        try:
            if not self.failed:
                for packet in self.stream.encode(None):
                    container.mux(packet)
        finally:
            container.close()


def open_video_writer(path: Path, fps: float, size: tuple[int, int]) -> OpenCVWriter | H264Writer:
    """H.264 through PyAV where it can be (see :func:`h264_problem`), else OpenCV (mp4v; MJPG for .avi), saying why
    once per process."""
    suffix = path.suffix.lower()
    if suffix == ".avi":
        return OpenCVWriter(path, "MJPG", fps, size)
    problem = h264_problem(suffix)
    if problem is None:
        return H264Writer(path, H264_FORMATS[suffix], fps, size)
    if problem not in _said:
        _said.add(problem)
        log.warning("annotated video is mp4v (MPEG-4 Part 2, not played by browsers): %s", problem)
    return OpenCVWriter(path, "mp4v", fps, size)


class VideoSink(Sink):
    """Annotated video at the source's fps and size (frames of another size are resized): H.264 in .mp4/.mov/.mkv
    when PyAV is installed, else OpenCV's mp4v; .avi is MJPG."""

    needs_annotation = True

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int]):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".avi", ".mkv", ".mov"):
            raise CloExportError(f"--save {self.path} must end in .mp4 (or .avi/.mkv/.mov)")
        if self.path.is_dir():
            raise CloExportError(f"--save '{self.path}' is a folder; give a file name such as out.mp4")
        kind, self.path = output_target("--save", self.path)
        if kind == "stream":
            raise CloExportError(
                f"--save '{path}' is a device or pipe, but a video file is finished by rewriting its "
                "start; give a file name such as out.mp4"
            )
        self.created = make_folder(self.path.parent, "--save folder")
        quiet_opencv()
        self.tmp = temp_name(self.path)
        try:  # OpenCV only says "cannot open": find out here whether the folder takes files at all
            self.tmp.touch()
        except OSError as e:
            remove_dirs(self.created)
            raise write_error(self.path, e) from e
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        try:
            self.writer = open_video_writer(self.tmp, self.fps, self.size)
        except OSError:
            self.writer = None
        if self.writer is None or not self.writer.isOpened():
            free = free_bytes(self.path.parent)
            self.abort()
            if free is not None and free < FULL_BYTES:
                raise self._full()
            raise CloExportError(
                f"cannot write '{self.path}' as video; try another suffix (.avi), pip install av, "
                "or an OpenCV build with FFmpeg"
            )
        self.codec = self.writer.codec
        self.frames = 0
        self.outputs = [self.path]

    def _full(self) -> CloExportError:
        """The one-line error of a disk that filled up while writing."""
        return CloExportError(
            f"cannot write '{self.path}': No space left on device; free some space or write elsewhere"
        )

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        img = frame.image if annotated is None else annotated
        if (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        errors = getattr(self.writer, "errors", OSError)
        try:
            self.writer.write(img)
        except errors as e:  # PyAV reports write errors (OpenCV does not)
            free = free_bytes(self.path.parent)
            self.abort()
            if free is not None and free < FULL_BYTES:
                raise self._full() from e
            raise CloExportError(f"cannot write '{self.path}': {e}; nothing was written") from e
        self.frames += 1
        if self.frames % 32 == 0:  # OpenCV does not report write errors: watch the space instead
            free = free_bytes(self.path.parent)
            if free is not None and free < FULL_BYTES:
                self.abort()
                raise self._full()

    def close(self) -> None:
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        try:
            writer.release()
            failed = None
        except getattr(writer, "errors", OSError) as e:  # PyAV: flushing or writing the index failed
            failed = str(e)
        if not self.frames:
            self.abort()
            return
        problem = failed or video_problem(self.tmp)
        if problem is not None:
            free = free_bytes(self.path.parent)
            self.abort()
            cause = (
                "No space left on device"
                if free is not None and free < FULL_BYTES
                else "the writer could not finish it"
            )
            raise CloExportError(
                f"cannot write '{self.path}': {cause} ({problem}); nothing was written: "
                "free some space or write elsewhere"
            )
        try:
            os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise write_error(self.path, e) from e

    def abort(self) -> None:
        writer, self.writer = getattr(self, "writer", None), None
        if writer is not None:
            try:
                writer.release()
            except getattr(writer, "errors", OSError):  # the file is discarded anyway
                pass
        self.tmp.unlink(missing_ok=True)
        remove_dirs(self.created)
        self.outputs = []


def _unique(rel: Path, used: set) -> Path:
    """``rel``, or ``rel`` with ``~2``, ``~3``… before the suffix when the name (any case) is taken; marks it used."""
    name, n = rel, 2
    while str(name).lower() in used:
        name, n = rel.with_name(f"{rel.stem}~{n}{rel.suffix}"), n + 1
    used.add(str(name).lower())
    return name


def annotated_names(files: list[Path], used: set) -> dict[str, Path]:
    """Each image's name in ``--save-dir``: its path relative to the images' common folder (so ``a/x.jpg`` and
    ``b/x.jpg`` stay apart), unique and the same on every run of the same list."""
    if not files:
        return {}
    real = [Path(os.path.abspath(f)) for f in files]
    root = Path(os.path.commonpath([str(p.parent) for p in real]))
    names: dict[str, Path] = {}
    for f, r in zip(files, real):
        rel = r.relative_to(root)
        if str(f) not in names:
            names[str(f)] = _unique(rel if rel.suffix.lower() in IMAGE_SUFFIXES else rel.with_suffix(".jpg"), used)
    return names


class ImageDirSink(Sink):
    """One annotated image per input image in ``directory``, under its path relative to the images' common folder
    (``files``: the source's list; without it, the file name), each written atomically."""

    needs_annotation = True

    def __init__(self, directory: str | Path, files: list[Path] | None = None):
        self.dir = Path(directory)
        self.created = make_folder(self.dir, "--save-dir")
        self.outputs = []
        self.used: set[str] = set()
        self.names = annotated_names(list(files or []), self.used)

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        name = self.names.get(frame.path)
        if name is None:
            src = Path(frame.path)
            name = _unique(
                Path(src.name if src.suffix.lower() in IMAGE_SUFFIXES else f"frame_{frame.index:06d}.jpg"), self.used
            )
            self.names[frame.path] = name
        out = self.dir / name
        ok, data = cv2.imencode(out.suffix.lower(), frame.image if annotated is None else annotated)
        if not ok:
            raise CloExportError(f"cannot encode image '{out}' as {out.suffix}; OpenCV lacks that codec")
        write_bytes_atomic(out, data.tobytes())  # a full disk or read-only folder: one error, no partial file
        self.outputs.append(out)

    def abort(self) -> None:
        remove_dirs(self.created)  # only folders this run made and left empty


def detection_records(dets: np.ndarray, names: dict[int, str]) -> list[dict]:
    """JSON-ready detections: class id, class name, score (5 decimals), xyxy in original-frame pixels (2 decimals)."""
    rows = np.asarray(dets, dtype=np.float32).reshape(-1, 6).astype(np.float64)
    boxes, scores = np.round(rows[:, :4], 2).tolist(), np.round(rows[:, 4], 5).tolist()
    return [
        {"class_id": c, "class_name": names.get(c, str(c)), "score": s, "xyxy": b}
        for b, s, c in zip(boxes, scores, rows[:, 5].astype(int).tolist())
    ]


class JsonlSink(Sink):
    """One JSON record per frame: frame, timestamp, source, width, height, detections."""

    def __init__(self, path: str | Path, names: dict[int, str]):
        self.path = Path(path)
        if self.path.is_dir():
            raise CloExportError(f"--json '{self.path}' is a folder; give a file name such as out.jsonl")
        kind, self.path = output_target("--json", self.path)
        self.stream = kind == "stream"  # a device or pipe: written directly, nothing to rename or remove
        self.created = [] if self.stream else make_folder(self.path.parent, "--json folder")
        self.tmp = self.path if self.stream else temp_name(self.path)
        self.names = names
        try:
            self.file = open(self.tmp, "w", encoding="utf-8", buffering=1 if self.stream else -1)  # noqa: SIM115
        except OSError as e:
            remove_dirs(self.created)
            raise write_error(self.path, e) from e
        self.outputs = [self.path]

    def record(self, frame: Frame, dets: np.ndarray) -> dict:
        """One frame's record: index, timestamp, source, size and detections."""
        return {
            "frame": frame.index,
            "timestamp": None if frame.timestamp is None else round(frame.timestamp, 6),
            "source": frame.path,
            "width": frame.size[0],
            "height": frame.size[1],
            "detections": detection_records(dets, self.names),
        }

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        try:
            self.file.write(json_text(self.record(frame, dets)))
        except OSError as e:
            self.abort()
            raise write_error(self.path, e) from e

    def close(self) -> None:
        if self.file is None:
            return
        try:
            self.file.flush()
            if not self.stream:
                os.fsync(self.file.fileno())
            self.file.close()
            self.file = None
            if not self.stream:
                os.replace(self.tmp, self.path)
        except OSError as e:
            self.abort()
            raise write_error(self.path, e) from e

    def abort(self) -> None:
        if self.file is not None:
            try:
                self.file.close()
            except OSError:  # the buffered tail cannot be flushed (full disk): the file is discarded anyway
                pass
            self.file = None
        if not self.stream:
            self.tmp.unlink(missing_ok=True)
        remove_dirs(self.created)
        self.outputs = []


def display_problem() -> str | None:
    """Why a window cannot open here (None when it can)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "--show needs a display, but DISPLAY is not set (headless or ssh without -X); use --save OUT.mp4 instead"
    try:
        cv2.namedWindow("clo-infer", cv2.WINDOW_NORMAL)
    except cv2.error:
        return (
            "--show needs OpenCV with GUI support, but this is opencv-python-headless; "
            "use --save OUT.mp4, or pip install opencv-python"
        )
    return None


class ShowSink(Sink):
    """A live window; closing it or pressing q stops the run."""

    needs_annotation = True

    def __init__(self, title: str = "clo-infer"):
        problem = display_problem()
        if problem:
            raise CloExportError(problem)
        self.title = title
        self.closed_by_user = False

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        cv2.imshow(self.title, frame.image if annotated is None else annotated)
        if cv2.waitKey(1) & 0xFF == ord("q"):
            self.closed_by_user = True

    def close(self) -> None:
        try:
            cv2.destroyWindow(self.title)
        except cv2.error:
            pass


def sink_outputs(sinks: list[Sink]) -> list[Path]:
    """Every file the sinks wrote."""
    return [p for s in sinks for p in s.outputs]


class MemorySink(Sink):
    """Keeps every frame's detections in memory, by frame index (for evaluation against ground truth)."""

    def __init__(self) -> None:
        self.detections: dict[int, np.ndarray] = {}

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        self.detections[frame.index] = np.asarray(dets, dtype=np.float32).reshape(-1, 6)
