"""Image and video files for calibration and parity checks: list them (a file, a folder (recursive), a glob,
a video, or a text file listing paths), read the images, sample video frames. clo-infer's inputs are data/readers.py."""

from __future__ import annotations

import glob
import logging
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"}


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def media_files(source: str | Path) -> list[Path]:
    """Image and video files named by ``source``, sorted: file, folder, glob or .txt list of paths."""
    text = str(source)
    path = Path(text)
    if any(c in text for c in "*?["):
        files = [Path(p) for p in glob.glob(text, recursive=True)]
    elif path.is_dir():
        files = [p for p in path.rglob("*") if p.is_file()]
    elif path.is_file() and path.suffix.lower() == ".txt":
        base = path.parent
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
        files = [p if p.is_absolute() else base / p for p in map(Path, lines)]
    elif path.is_file():
        files = [path]
    else:
        raise CloExportError(f"source '{source}' does not exist; pass an image, a folder, a glob, a video or a .txt list")
    media = sorted(p for p in files if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
    if not media:
        raise CloExportError(f"source '{source}' holds no images or videos ({', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})")
    return media


def video_frames(path: Path, limit: int | None = None) -> Iterator[np.ndarray]:
    """Decoded BGR frames of a video, up to ``limit``."""
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CloExportError(f"OpenCV cannot open video '{path}'; check the file or convert it to mp4 (H.264)")
    try:
        n = 0
        while limit is None or n < limit:
            ok, frame = cap.read()
            if not ok:
                break
            n += 1
            yield frame
    finally:
        cap.release()


def read_images(source: str | Path, limit: int | None = None) -> Iterator[np.ndarray]:
    """BGR uint8 frames from every image and video in ``source``.

    Unreadable images are skipped and counted: a warning gives the counts, and a source where
    nothing at all is readable is an error (never a silent fallback).
    """
    n, bad = 0, []
    try:
        for path in media_files(source):
            if limit is not None and n >= limit:
                return
            if is_video(path):
                for frame in video_frames(path, None if limit is None else limit - n):
                    n += 1
                    yield frame
                continue
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if img is None:
                bad.append(path)
                continue
            n += 1
            yield img
        if n == 0:
            raise CloExportError(f"none of the {len(bad)} file(s) in '{source}' could be read as an image or video "
                                 f"(e.g. {bad[0].name if bad else '?'}); check the files (jpg, png, bmp, tif, webp, mp4)")
    finally:
        if bad and n:
            log.warning("%s: %d unreadable file(s) skipped (e.g. %s); %d image(s) read", source, len(bad), bad[0].name, n)


def frame_count(path: Path) -> int:
    """Frames in a video as its container reports them (0 when OpenCV cannot open it or does not know)."""
    cap = cv2.VideoCapture(str(path))
    try:
        return max(int(cap.get(cv2.CAP_PROP_FRAME_COUNT)), 0) if cap.isOpened() else 0
    finally:
        cap.release()


def frames_at(path: Path, indices: list[int] | set[int]) -> Iterator[tuple[int, np.ndarray]]:
    """(index, BGR frame) for the wanted frame indices, decoded in one sequential pass (no seeking)."""
    wanted = sorted(set(int(i) for i in indices))
    if not wanted:
        return
    cap = cv2.VideoCapture(str(path))
    if not cap.isOpened():
        raise CloExportError(f"OpenCV cannot open video '{path}'; check the file or convert it to mp4 (H.264)")
    try:
        k, index = 0, 0
        while k < len(wanted) and cap.grab():
            if index == wanted[k]:
                ok, frame = cap.retrieve()
                if ok and frame is not None:
                    yield index, frame
                k += 1
            index += 1
    finally:
        cap.release()
