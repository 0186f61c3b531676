"""Where results go: annotated video (mp4), annotated images, JSON Lines, a window.

Files are written under a temporary name beside the target and renamed by ``close()``, so a
finished (or Ctrl-C'd) run leaves complete files and a crashed one leaves none. ``abort()``
removes the temporary file instead.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import cv2
import numpy as np

from clo_export.data.stream import Frame
from clo_export.errors import CloExportError

# YOLOv5's Colors palette (hex), indexed by class id
PALETTE = ("FF3838", "FF9D97", "FF701F", "FFB21D", "CFD231", "48F90A", "92CC17", "3DDB86", "1A9334", "00D4BB",
           "2C99A8", "00C2FF", "344593", "6473FF", "0018EC", "8438FF", "520085", "CB38FF", "FF95C8", "FF37C7")


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
        cv2.putText(out, label, (p1[0], p1[1] - 2 if above else p1[1] + th + 2), 0, scale, (255, 255, 255),
                    max(lw - 1, 1), cv2.LINE_AA)
    return out


def temp_name(path: Path) -> Path:
    """A hidden temporary name beside ``path`` that keeps its suffix (OpenCV picks the container from it)."""
    return path.with_name(f".{path.stem}.part{os.getpid()}{path.suffix}")


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


class VideoSink(Sink):
    """Annotated mp4 at the source's fps and size (frames of another size are resized)."""

    needs_annotation = True

    def __init__(self, path: str | Path, fps: float, size: tuple[int, int], fourcc: str = "mp4v"):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".avi", ".mkv", ".mov"):
            raise CloExportError(f"--save {self.path} must end in .mp4 (or .avi/.mkv/.mov)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_name(self.path)
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        code = fourcc if self.path.suffix.lower() != ".avi" else "MJPG"
        self.writer = cv2.VideoWriter(str(self.tmp), cv2.VideoWriter_fourcc(*code), self.fps, self.size)
        if not self.writer.isOpened():
            self.writer.release()
            self.tmp.unlink(missing_ok=True)
            raise CloExportError(f"OpenCV cannot write '{self.path}' with codec {code}; try another suffix (.avi) "
                                 "or an OpenCV build with FFmpeg")
        self.frames = 0
        self.outputs = [self.path]

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        img = frame.image if annotated is None else annotated
        if (img.shape[1], img.shape[0]) != self.size:
            img = cv2.resize(img, self.size, interpolation=cv2.INTER_AREA)
        self.writer.write(img)
        self.frames += 1

    def close(self) -> None:
        if self.writer is None:
            return
        self.writer.release()
        self.writer = None
        if self.frames:
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)
            self.outputs = []

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.release()
            self.writer = None
        self.tmp.unlink(missing_ok=True)
        self.outputs = []


class ImageDirSink(Sink):
    """One annotated image per input image, same file name, in ``directory`` (each written atomically)."""

    needs_annotation = True

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.outputs = []
        self._used: set[str] = set()

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        src = Path(frame.path)
        name = src.name if src.suffix.lower() in (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp") \
            else f"frame_{frame.index:06d}.jpg"
        if name in self._used:  # same name from two folders
            name = f"{Path(name).stem}_{frame.index}{Path(name).suffix}"
        self._used.add(name)
        out = self.dir / name
        tmp = temp_name(out)
        if not cv2.imwrite(str(tmp), frame.image if annotated is None else annotated):
            tmp.unlink(missing_ok=True)
            raise CloExportError(f"cannot write image '{out}'; check the folder is writable")
        os.replace(tmp, out)
        self.outputs.append(out)


def detection_records(dets: np.ndarray, names: dict[int, str]) -> list[dict]:
    """JSON-ready detections: class id, class name, score (5 decimals), xyxy in original-frame pixels (2 decimals)."""
    rows = np.asarray(dets, dtype=np.float32).reshape(-1, 6).astype(np.float64)
    boxes, scores = np.round(rows[:, :4], 2).tolist(), np.round(rows[:, 4], 5).tolist()
    return [{"class_id": c, "class_name": names.get(c, str(c)), "score": s, "xyxy": b}
            for b, s, c in zip(boxes, scores, rows[:, 5].astype(int).tolist())]


class JsonlSink(Sink):
    """One JSON record per frame: frame, timestamp, source, width, height, detections."""

    def __init__(self, path: str | Path, names: dict[int, str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = temp_name(self.path)
        self.names = names
        self.file = open(self.tmp, "w", encoding="utf-8")  # noqa: SIM115 (closed by close/abort)
        self.outputs = [self.path]

    def write(self, frame: Frame, dets: np.ndarray, annotated: np.ndarray | None) -> None:
        record = {"frame": frame.index, "timestamp": None if frame.timestamp is None else round(frame.timestamp, 6),
                  "source": frame.path, "width": frame.size[0], "height": frame.size[1],
                  "detections": detection_records(dets, self.names)}
        self.file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self.file is None:
            return
        self.file.close()
        self.file = None
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.tmp.unlink(missing_ok=True)
        self.outputs = []


def display_problem() -> str | None:
    """Why a window cannot open here (None when it can)."""
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return "--show needs a display, but DISPLAY is not set (headless or ssh without -X); use --save OUT.mp4 instead"
    try:
        cv2.namedWindow("clo-infer", cv2.WINDOW_NORMAL)
    except cv2.error:
        return ("--show needs OpenCV with GUI support, but this is opencv-python-headless; "
                "use --save OUT.mp4, or pip install opencv-python")
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
