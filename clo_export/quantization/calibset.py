"""Calibration images: find, sample (seeded), split off held-out images, and feed them preprocessed.

Sources are image files, folders (recursive), globs, ``.txt`` lists and videos (frames sampled
evenly over the whole clip). Every image goes through :func:`clo_export.data.preprocess.preprocess`,
the function inference uses, so calibration sees exactly the tensors the deployed model sees.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from clo_export.data.files import frame_count, frames_at, is_video, media_files, read_image
from clo_export.data.preprocess import preprocess_batch
from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

DEFAULT_NUM = 256
DEFAULT_HOLDOUT = 128  # the split that decides method and float sites: 128 halves the noise of 64 at a 0.3-point target
MIN_IMAGES = 16  # fewer calibration images are noise: held-out images are only taken from larger sets
MIN_HOLDOUT = 16  # an accuracy report on fewer held-out images is noise: smaller sets are calibrated, not measured
RECOMMENDED = 200  # below this warn (TensorRT and ONNX Runtime guides suggest ~500; 200 is the usual floor)


@dataclass(frozen=True, order=True)
class Item:
    """One calibration image: an image file, or frame ``frame`` of a video."""

    path: Path
    frame: int | None = None

    def __str__(self) -> str:
        return str(self.path) if self.frame is None else f"{self.path}#{self.frame}"


@dataclass
class CalibSplit:
    """The sampled calibration images, the held-out images for the accuracy report, and what was skipped."""

    calib: list[Item]
    holdout: list[Item]
    found: int  # candidate images and video frames before sampling
    skipped: list[str] = field(default_factory=list)  # unreadable files / frames
    warnings: list[str] = field(default_factory=list)
    unmeasured: str | None = None  # why no images were held out although some were asked for (too few images)

    def digest(self) -> str:
        """Identity of the calibration images (paths, frames, sizes, mtimes): part of the ranges cache key."""
        h = hashlib.sha256()
        for item in sorted(self.calib):
            st = item.path.stat() if item.path.exists() else None
            h.update(f"{item}|{st.st_size if st else -1}|{st.st_mtime_ns if st else -1}\n".encode())
        return h.hexdigest()


def _video_items(path: Path, k: int) -> list[Item]:
    """``k`` frame indices spread evenly over the video (all frames when it has fewer)."""
    n = frame_count(path)
    if n <= 0 or k <= 0:
        return []
    idx = np.unique(np.linspace(0, n - 1, num=min(k, n)).round().astype(int))
    return [Item(path, int(i)) for i in idx]


def _readable(items: Sequence[Item], want: int) -> tuple[list[Item], list[str]]:
    """The first ``want`` items that decode, in order; unreadable ones are listed (videos read in one pass each)."""
    ok: list[Item] = []
    bad: list[str] = []
    videos: dict[Path, set[int]] = {}
    for item in items:
        if item.frame is not None:
            videos.setdefault(item.path, set()).add(item.frame)
    decoded: dict[Path, set[int]] = {}
    for path, frames in videos.items():
        try:
            decoded[path] = {i for i, _ in frames_at(path, frames)}
        except CloExportError:
            decoded[path] = set()
    for item in items:
        if len(ok) >= want:
            break
        if item.frame is None:
            good = read_image(item.path) is not None  # a decompression bomb is refused from its header
        else:
            good = item.frame in decoded[item.path]
        (ok.append(item) if good else bad.append(str(item)))
    return ok, bad


def holdout_count(n: int, num: int, holdout: int, min_images: int = MIN_IMAGES, min_holdout: int = MIN_HOLDOUT) -> int:
    """Images of ``n`` to hold out: --num first, a fifth and the report's minimum at least; 0 if too few calibrate."""
    n_hold = holdout if n >= num + holdout else min(holdout, max(n - num, n // 5))
    want = min(holdout, min_holdout)
    if n_hold < want:
        n_hold = want
    return n_hold if n - n_hold >= min_images else 0


def split_sources(
    sources: str | Path | Sequence[str | Path],
    num: int = DEFAULT_NUM,
    holdout: int = DEFAULT_HOLDOUT,
    seed: int = 0,
    min_images: int = MIN_IMAGES,
    min_holdout: int = MIN_HOLDOUT,
) -> CalibSplit:
    """Sample up to ``num`` calibration images plus ``holdout`` others (never the same) from ``sources``."""
    if num < 1 or holdout < 0:
        raise CloExportError(f"--num {num} must be >= 1 and --holdout {holdout} >= 0")
    if isinstance(sources, (str, Path)):
        sources = [sources]
    files = sorted({p for s in sources for p in media_files(s)})
    need = num + holdout
    images = [Item(p) for p in files if not is_video(p)]
    videos = [p for p in files if is_video(p)]
    pool = list(images)
    skipped: list[str] = []
    for v in videos:  # each video gets an even share of what is needed, sampled over its whole length
        frames = _video_items(v, math.ceil(need / len(videos)))
        if not frames:
            skipped.append(f"{v} (no readable frames)")
        pool += frames
    rng = np.random.default_rng(seed)
    order = [pool[i] for i in rng.permutation(len(pool))]
    usable, bad = _readable(order, need)
    skipped += bad
    n = len(usable)
    names = ", ".join(str(s) for s in sources)
    if n == 0:
        raise CloExportError(
            f"none of the {len(pool)} image(s)/frame(s) in {names} could be read "
            f"({len(skipped)} unreadable, e.g. {skipped[0] if skipped else '?'}); check the files"
        )
    n_hold = holdout_count(n, num, holdout, min_images, min_holdout)
    calib, held = sorted(usable[: n - n_hold]), sorted(usable[n - n_hold :])
    unmeasured, want = None, min(holdout, min_holdout)
    readable = f"{n} readable image{'s' * (n != 1)}"
    if holdout and not n_hold:
        unmeasured = (
            f"{readable}: the held-out report needs {want} held out besides {min_images} to calibrate "
            f"({want + min_images}+)"
        )
    warnings = []
    if unmeasured:
        warnings.append(
            f"only {readable} in {names}: calibrating on all with none held out, so INT8 accuracy is not measured and "
            f"there is no automatic float fallback ({want + min_images}+ images needed for those, {RECOMMENDED}+ "
            "recommended)"
        )
    elif len(calib) < min(RECOMMENDED, num):
        warnings.append(
            f"only {len(calib)} calibration images ({RECOMMENDED}+ recommended); INT8 ranges may not cover "
            "the deployment data"
        )
    if skipped:
        warnings.append(
            f"skipped {len(skipped)} unreadable file(s)/frame(s) of {len(pool)} (e.g. {skipped[0]}); "
            f"using {len(calib)} calibration + {len(held)} held-out images"
        )
    for w in warnings:
        log.warning(w)
    return CalibSplit(calib, held, len(pool), skipped, warnings, unmeasured)


def read_items(items: Iterable[Item], skipped: list[str] | None = None) -> Iterator[tuple[Item, np.ndarray]]:
    """(item, BGR uint8 frame) in the given order; each video is decoded once per call."""
    items = list(items)
    cache: dict[Path, dict[int, np.ndarray]] = {}
    for item in items:
        if item.frame is None:
            img = read_image(item.path)
        else:
            if item.path not in cache:
                wanted = {i.frame for i in items if i.path == item.path and i.frame is not None}
                cache = {item.path: dict(frames_at(item.path, wanted))}  # keep one video's frames at a time
            img = cache[item.path].pop(item.frame, None)
        if img is None:
            if skipped is not None:
                skipped.append(str(item))
            continue
        yield item, img


class CalibrationData:
    """An iterable of ``{input_name: (batch, 3, H, W) float32}`` feeds, built with the inference preprocessing.

    Re-iterable; used by the Q/DQ calibrator here and by the TensorRT calibrator. A last partial
    batch is dropped (TensorRT calibrators need full batches); with batch 1 nothing is dropped.
    """

    def __init__(self, items: Sequence[Item], imgsz: tuple[int, int], input_name: str = "images", batch: int = 1):
        self.items = list(items)
        self.imgsz = (int(imgsz[0]), int(imgsz[1]))
        self.input_name = input_name
        self.batch = int(batch)
        self.skipped: list[str] = []

    def __len__(self) -> int:
        return len(self.items) // self.batch

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        frames: list[np.ndarray] = []
        for _, img in read_items(self.items, self.skipped):
            frames.append(img)
            if len(frames) == self.batch:
                yield {self.input_name: preprocess_batch(frames, self.imgsz)[0]}
                frames = []
