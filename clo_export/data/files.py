"""Image and video files for calibration and parity checks: list them (a file, a folder (recursive), a glob,
a video, or a text file listing paths), read the images, sample video frames. clo-infer's inputs are data/readers.py."""

from __future__ import annotations

import glob
import logging
import os
import re
import stat
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Optional, Tuple

import cv2
import numpy as np

from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm", ".mpg", ".mpeg"}


MAX_PIXELS = 100_000_000  # decoded pixels per image (100 MP); a larger image is refused from its header
MAX_PIXELS_ENV = "CLO_EXPORT_MAX_PIXELS"
SPECIAL_KINDS = {
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}
LIVE_HINT = "pass a regular file (a live stream is a URL such as rtsp://… or a webcam index such as 0)"


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTS


def path_kind(path: str | Path) -> str:
    """What ``path`` is, without opening it (opening a FIFO blocks): 'file', 'folder', 'missing' or a special kind."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return "missing"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "folder"
    return SPECIAL_KINDS.get(stat.S_IFMT(mode), "not a regular file")


def refuse_special(what: str, path: str | Path, hint: str = LIVE_HINT) -> None:
    """Refuse a FIFO, socket or device where a file is expected: reading one blocks or never ends."""
    kind = path_kind(path)
    if kind not in ("file", "folder", "missing"):
        camera = re.search(r"(?:^|/)video(\d+)$", str(path)) if hint == LIVE_HINT else None
        if camera is not None and kind == SPECIAL_KINDS[stat.S_IFCHR]:
            hint = f"a camera is opened by its index: pass {camera.group(1)}"
        raise CloExportError(f"{what} '{path}' is {kind}, not a regular file; {hint}")


def is_pattern(text: str) -> bool:
    """A glob pattern: has * ? or [ and is no existing path (an existing 'shot[1].jpg' is taken literally)."""
    return any(c in text for c in "*?[") and not os.path.lexists(text)


def pixel_limit(max_pixels: Optional[int] = None) -> int:
    """The decoded-pixels limit: ``max_pixels``, else $CLO_EXPORT_MAX_PIXELS, else :data:`MAX_PIXELS`."""
    if max_pixels is not None:
        return max_pixels
    text = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not text:
        return MAX_PIXELS
    if not text.isascii() or not text.isdecimal() or int(text) < 1:
        raise CloExportError(f"{MAX_PIXELS_ENV}={text!r} must be a whole number of pixels (e.g. 400000000)")
    return int(text)


def _jpeg_size(f) -> Optional[Tuple[int, int]]:
    """(width, height) from a JPEG's first SOF segment, walking the segment lengths."""
    f.seek(2)
    while True:
        if f.read(1) != b"\xff":
            return None
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes before a marker
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # markers without a length
            continue
        head = f.read(2)
        if len(head) < 2:
            return None
        length = struct.unpack(">H", head)[0]
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            data = f.read(5)
            if len(data) < 5:
                return None
            height, width = struct.unpack(">HH", data[1:5])
            return width, height
        if marker == 0xDA or length < 2:  # image data before any frame header: not a JPEG we can size
            return None
        f.seek(length - 2, os.SEEK_CUR)


def _webp_size(head: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from a WebP's first chunk (VP8, VP8L or VP8X)."""
    chunk = head[12:16]
    if chunk == b"VP8X" and len(head) >= 30:
        return 1 + int.from_bytes(head[24:27], "little"), 1 + int.from_bytes(head[27:30], "little")
    if chunk == b"VP8L" and len(head) >= 25:
        bits = int.from_bytes(head[21:25], "little")
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8 " and len(head) >= 30:
        return (int.from_bytes(head[26:28], "little") & 0x3FFF), (int.from_bytes(head[28:30], "little") & 0x3FFF)
    return None


TIFF_ENTRIES_MAX = 4096  # directory entries read before giving up on a TIFF header (real files have dozens)


def _tiff_size(f, head: bytes) -> Optional[Tuple[int, int]]:
    """(width, height) from a TIFF's (or BigTIFF's) first image directory: the page OpenCV decodes."""
    order = {b"II": "<", b"MM": ">"}.get(head[:2])
    if order is None or len(head) < 16:
        return None
    magic = struct.unpack(order + "H", head[2:4])[0]
    if magic == 42:
        offset, count_fmt, entry_fmt, size = struct.unpack(order + "I", head[4:8])[0], "H", "HHI4s", 12
    elif magic == 43:
        offset, count_fmt, entry_fmt, size = struct.unpack(order + "Q", head[8:16])[0], "Q", "HHQ8s", 20
    else:
        return None
    f.seek(offset)
    raw = f.read(struct.calcsize(count_fmt))
    if len(raw) < struct.calcsize(count_fmt):
        return None
    found = {}
    for _ in range(min(struct.unpack(order + count_fmt, raw)[0], TIFF_ENTRIES_MAX)):
        entry = f.read(size)
        if len(entry) < size:
            return None
        tag, kind, _count, value = struct.unpack(order + entry_fmt, entry)
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT, LONG or LONG8
            fmt = {3: "H", 4: "I", 16: "Q"}.get(kind)
            if fmt is None:
                return None
            found[tag] = struct.unpack(order + fmt, value[: struct.calcsize(fmt)])[0]
        if len(found) == 2:
            return found[256], found[257]
    return None


def image_size(path: str | Path) -> Optional[Tuple[int, int]]:
    """(width, height) read from a PNG, JPEG, BMP, WebP or TIFF header without decoding; None for other formats."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
            if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
                return struct.unpack(">II", head[16:24])
            if head[:2] == b"\xff\xd8":
                return _jpeg_size(f)
            if head[:2] in (b"II", b"MM"):
                return _tiff_size(f, head)
    except OSError:  # unreadable: OpenCV gives None and the caller counts it
        return None
    if head[:2] == b"BM" and len(head) >= 26:
        width, height = struct.unpack("<ii", head[18:26])
        return abs(width), abs(height)
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return _webp_size(head)
    return None


def check_pixels(path: str | Path, max_pixels: Optional[int] = None) -> None:
    """Refuse an image whose header promises more decoded pixels than the limit (a small file can decode to GBs)."""
    size = image_size(path)
    limit = pixel_limit(max_pixels)
    if size is not None and size[0] * size[1] > limit:
        w, h = size
        raise CloExportError(
            f"image '{path}' decodes to {w}x{h} = {w * h / 1e6:.0f} MP ({w * h * 3 / 2**30:.1f} GiB), "
            f"over the {limit / 1e6:g} MP limit; downscale it, or raise the limit with --max-pixels "
            f"or {MAX_PIXELS_ENV}"
        )


def read_image(path: str | Path, max_pixels: Optional[int] = None) -> Optional[np.ndarray]:
    """A BGR image (None when OpenCV cannot read it), refused before decoding when over the pixel limit."""
    refuse_special("image", path)
    check_pixels(path, max_pixels)
    return cv2.imread(str(path), cv2.IMREAD_COLOR)


def media_files(source: str | Path) -> list[Path]:
    """Image and video files named by ``source``, sorted: file, folder, glob or .txt list of paths.

    A FIFO, socket or device among them (or as ``source``) is refused: reading one blocks.
    """
    text = str(source)
    path = Path(text)
    refuse_special("source", path)
    if is_pattern(text):
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
        raise CloExportError(
            f"source '{source}' does not exist; pass an image, a folder, a glob, a video or a .txt list"
        )
    media = sorted(p for p in files if p.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
    for p in media:
        refuse_special("file", p)
    if not media:
        raise CloExportError(
            f"source '{source}' holds no images or videos ({', '.join(sorted(IMAGE_EXTS | VIDEO_EXTS))})"
        )
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
            img = read_image(path)
            if img is None:
                bad.append(path)
                continue
            n += 1
            yield img
        if n == 0:
            raise CloExportError(
                f"none of the {len(bad)} file(s) in '{source}' could be read as an image or video "
                f"(e.g. {bad[0].name if bad else '?'}); check the files (jpg, png, bmp, tif, webp, mp4)"
            )
    finally:
        if bad and n:
            log.warning(
                "%s: %d unreadable file(s) skipped (e.g. %s); %d image(s) read", source, len(bad), bad[0].name, n
            )


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
