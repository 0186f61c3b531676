"""A deterministic procedural detection dataset: coloured shapes on busy backgrounds.

Five classes (:data:`NAMES`): circle, square, triangle, star, cross. Every scene is a pure
function of a ``numpy.random.Generator``, so the same seed gives the same pixels and boxes on
every machine (NumPy + OpenCV only; no torch, this module also runs at demo time).

API
---
``render_scene(rng, size=(h, w), n_objects=(lo, hi)) -> (img_bgr uint8, boxes (m, 5) float32)``
one still scene; ``make_dataset(seed, n, size)`` yields ``n`` of them from one seed;
``make_video_frames(seed, n_frames, size=(480, 640))`` yields :class:`VideoFrame` (image, boxes,
track_ids) of moving, spinning, occluding shapes (``n_frames / VIDEO_FPS`` seconds).
Shape sizes are relative to ``max(h, w)``, so a scene letterboxed to a square model input
looks like a square scene rendered at that size (the demo video at 640x480 matches training
scenes at the model's imgsz).

Box convention
--------------
Boxes are ``[cls, x1, y1, x2, y2]`` in pixels, float32, computed from the drawn geometry, not
from pixels: a shape is rasterised from integer vertices (or an integer centre and radius), so
it covers pixel columns ``xmin..xmax`` and its box is ``[xmin, ymin, xmax + 1, ymax + 1]``
(pixel edges), clipped to the frame. The box is the extent of the *whole* shape (amodal), also
where a later shape covers part of it; partly out-of-frame shapes get their clipped box.

Occlusion
---------
Later shapes are drawn over earlier ones. In still scenes a placement that would leave any
shape (itself included) less than ``min_visible`` (default 0.5) of its area visible inside the
frame is re-drawn elsewhere, so every drawn shape is labelled and no label is mostly hidden.
In videos shapes move through each other; a frame keeps the box of a shape only while at
least :data:`VIDEO_MIN_VISIBLE` of it is visible.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import NamedTuple

import cv2
import numpy as np

NAMES = ["circle", "square", "triangle", "star", "cross"]
NC = len(NAMES)

SIZE_RANGE = (0.04, 0.16)  # shape radius as a fraction of max(h, w) (letterbox-invariant)
MIN_CONTRAST = 70.0  # minimum BGR distance between a shape's colour and the background mean
VIDEO_FPS = 30
VIDEO_MIN_VISIBLE = 0.3


class VideoFrame(NamedTuple):
    """One demo-video frame: BGR image, boxes (m, 5) [cls, x1, y1, x2, y2], and each box's track id."""

    image: np.ndarray
    boxes: np.ndarray
    track_ids: np.ndarray


# --------------------------------------------------------------------------- geometry


def _unit_polygon(cls: int, aspect: float = 1.0, inner: float = 0.45, arm: float = 0.33) -> np.ndarray | None:
    """Vertices (k, 2) of a class's polygon with outer radius 1, unrotated; None for the circle."""
    if cls == 0:
        return None
    if cls == 1:  # square (unit circumradius)
        a = np.deg2rad([45, 135, 225, 315])
        return np.stack([np.cos(a), np.sin(a)], 1)
    if cls == 2:  # triangle, equilateral stretched by `aspect` along its height
        a = np.deg2rad([-90, 30, 150])
        p = np.stack([np.cos(a), np.sin(a)], 1)
        p[:, 1] *= aspect
        return p
    if cls == 3:  # five-pointed star
        a = np.deg2rad(-90 + 36 * np.arange(10))
        r = np.where(np.arange(10) % 2 == 0, 1.0, inner)
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)
    if cls == 4:  # cross (plus sign) with half-arm-width `arm`
        w = arm
        return np.array(
            [
                [-w, -1],
                [w, -1],
                [w, -w],
                [1, -w],
                [1, w],
                [w, w],
                [w, 1],
                [-w, 1],
                [-w, w],
                [-1, w],
                [-1, -w],
                [-w, -w],
            ],
            dtype=np.float64,
        )
    raise ValueError(f"class id {cls} out of range 0..{NC - 1}")


class Shape:
    """One shape's class, colour and form; :meth:`place` gives its rasterisable geometry."""

    def __init__(self, cls: int, radius: float, color: tuple[int, int, int], aspect: float, inner: float, arm: float):
        self.cls, self.radius, self.color = cls, radius, color
        self.unit = _unit_polygon(cls, aspect, inner, arm)

    @classmethod
    def random(cls, rng: np.random.Generator, scale: float, bg_mean: np.ndarray, size_range=SIZE_RANGE) -> "Shape":
        k = int(rng.integers(NC))
        radius = float(rng.uniform(*size_range)) * scale
        return cls(
            k,
            radius,
            _contrasting_color(rng, bg_mean),
            float(rng.uniform(0.8, 1.2)),
            float(rng.uniform(0.38, 0.5)),
            float(rng.uniform(0.25, 0.38)),
        )

    def place(self, cx: float, cy: float, angle: float) -> tuple[str, np.ndarray]:
        """('circle', [cx, cy, r]) or ('poly', int32 (k, 2) vertices) at a position and rotation."""
        if self.unit is None:
            return "circle", np.array([round(cx), round(cy), max(1, round(self.radius))], dtype=np.int32)
        c, s = math.cos(angle), math.sin(angle)
        rot = self.unit @ np.array([[c, s], [-s, c]]) * self.radius
        return "poly", np.round(rot + (cx, cy)).astype(np.int32)


def _geom_box(geom: tuple[str, np.ndarray], h: int, w: int) -> np.ndarray:
    """Exact pixel-edge box [x1, y1, x2, y2] of a rasterised geometry, clipped to the frame."""
    kind, g = geom
    if kind == "circle":
        cx, cy, r = (int(v) for v in g)
        x1, y1, x2, y2 = cx - r, cy - r, cx + r + 1, cy + r + 1
    else:
        x1, y1 = g.min(0)
        x2, y2 = g.max(0) + 1
    return np.array([min(max(x1, 0), w), min(max(y1, 0), h), min(max(x2, 0), w), min(max(y2, 0), h)], dtype=np.float32)


def _geom_area(geom: tuple[str, np.ndarray]) -> float:
    """Rasterised area of the whole shape (out-of-frame parts included), in pixels."""
    kind, g = geom
    if kind == "circle":
        r = float(g[2])
        return math.pi * (r + 0.5) ** 2
    return float(cv2.contourArea(g.astype(np.float32))) + 0.5 * float(cv2.arcLength(g.astype(np.float32), True)) + 1.0


def _draw(img: np.ndarray, geom: tuple[str, np.ndarray], color, aa: bool) -> None:
    line = cv2.LINE_AA if aa else cv2.LINE_8
    kind, g = geom
    if kind == "circle":
        cv2.circle(img, (int(g[0]), int(g[1])), int(g[2]), color, -1, line)
    else:
        cv2.fillPoly(img, [g.reshape(-1, 1, 2)], color, line)


def _visible_fractions(labels: np.ndarray, areas: list[float]) -> np.ndarray:
    counts = np.bincount(labels.ravel(), minlength=len(areas) + 1)[1:]
    return counts / np.maximum(np.asarray(areas), 1.0)


def _shifted(geom: tuple[str, np.ndarray], dx: int, dy: int) -> tuple[str, np.ndarray]:
    kind, g = geom
    g = g.copy()
    if kind == "circle":
        g[0] -= dx
        g[1] -= dy
    else:
        g -= (dx, dy)
    return kind, g


_NOISE_BANK: np.ndarray | None = None


def _noise(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Unit Gaussian noise (h, w, 3): a random crop (and flips) of a fixed, seeded noise bank.

    Drawing fresh normals for every pixel was most of a scene's cost; a crop of a deterministic
    bank at a random offset is just as good as pixel noise and keeps scenes reproducible.
    """
    global _NOISE_BANK
    if _NOISE_BANK is None:
        _NOISE_BANK = np.random.default_rng(20240607).standard_normal((1024, 1024, 3), dtype=np.float32)
    bh, bw = _NOISE_BANK.shape[:2]
    if h > bh or w > bw:
        return rng.standard_normal((h, w, 3), dtype=np.float32)
    y, x = int(rng.integers(bh - h + 1)), int(rng.integers(bw - w + 1))
    n = _NOISE_BANK[y : y + h, x : x + w]
    if rng.random() < 0.5:
        n = n[::-1]
    if rng.random() < 0.5:
        n = n[:, ::-1]
    return n


# --------------------------------------------------------------------------- appearance


def _contrasting_color(rng: np.random.Generator, bg_mean: np.ndarray) -> tuple[int, int, int]:
    best, best_d = None, -1.0
    for _ in range(20):
        c = rng.integers(0, 256, 3)
        d = float(np.linalg.norm(c - bg_mean))
        if d >= MIN_CONTRAST:
            return int(c[0]), int(c[1]), int(c[2])
        if d > best_d:
            best, best_d = c, d
    return int(best[0]), int(best[1]), int(best[2])


BACKGROUNDS = ("flat", "gradient", "texture", "stripes")


def _background(rng: np.random.Generator, h: int, w: int, kind_name: str | None = None) -> np.ndarray:
    """A float32 (h, w, 3) background: flat, gradient, blotchy texture or stripes, in 0..255."""
    kind = int(rng.integers(4))  # drawn even when forced, so forcing changes nothing else
    if kind_name is not None:
        kind = BACKGROUNDS.index(kind_name)
    base = rng.uniform(0, 255, 3).astype(np.float32)
    if kind == 0:  # flat
        bg = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == 1:  # linear gradient between two colours
        other = rng.uniform(0, 255, 3).astype(np.float32)
        a = rng.uniform(0, 2 * np.pi)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        t = x * math.cos(a) + y * math.sin(a)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
        bg = base + t[..., None] * (other - base)
    elif kind == 2:  # blotchy texture: upsampled low-resolution noise
        cell = int(rng.integers(4, 32))
        small = rng.uniform(-1, 1, (max(2, h // cell), max(2, w // cell), 3)).astype(np.float32)
        bg = base + cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC) * float(rng.uniform(20, 70))
    else:  # stripes
        other = rng.uniform(0, 255, 3).astype(np.float32)
        a = rng.uniform(0, np.pi)
        period = rng.uniform(6, 40)
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        t = 0.5 + 0.5 * np.sin((x * math.cos(a) + y * math.sin(a)) * (2 * np.pi / period))
        bg = base + t[..., None] * (other - base) * float(rng.uniform(0.2, 0.6))
    return bg


def _finish(rng: np.random.Generator, img: np.ndarray, blur_p: float = 0.3, noise_max: float = 12.0) -> np.ndarray:
    """Optional Gaussian blur, then Gaussian pixel noise; returns uint8."""
    if rng.random() < blur_p:
        img = cv2.GaussianBlur(img, (0, 0), float(rng.uniform(0.5, 1.6)))
    sigma = float(rng.uniform(0, noise_max))
    out = img.astype(np.float32)
    if sigma > 0.5:
        out += _noise(rng, *out.shape[:2]) * np.float32(sigma)
    return np.clip(out, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- scenes


def render_scene(
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 256),
    n_objects: tuple[int, int] = (1, 8),
    min_visible: float = 0.5,
    size_range: tuple[float, float] = SIZE_RANGE,
    blur_p: float = 0.3,
    noise_max: float = 12.0,
    background: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One still scene: (BGR uint8 (h, w, 3), boxes float32 (m, 5) [cls, x1, y1, x2, y2]).

    ``n_objects`` is an inclusive range; a shape that finds no placement keeping every shape
    at least ``min_visible`` visible in 20 tries is left out (so m may be below the draw).
    ``background`` forces one of :data:`BACKGROUNDS` (default: drawn at random); ``blur_p`` and
    ``noise_max`` set the chance of a Gaussian blur and the largest pixel-noise sigma.
    """
    if background is not None and background not in BACKGROUNDS:
        raise ValueError(f"background must be one of {BACKGROUNDS} or None, got {background!r}")
    h, w = int(size[0]), int(size[1])
    scale = float(max(h, w))
    bg = _background(rng, h, w, background)
    bg_mean = bg.reshape(-1, 3).mean(0)
    n = int(rng.integers(n_objects[0], n_objects[1] + 1))
    labels = np.zeros((h, w), np.uint8)  # 0 background, k + 1 where shape k is on top
    counts = np.zeros(n + 1, np.int64)  # visible pixels per label
    shapes: list[tuple[Shape, tuple[str, np.ndarray]]] = []
    areas: list[float] = []
    for _ in range(n):
        shape = Shape.random(rng, scale, bg_mean, size_range)
        for _try in range(20):
            geom = shape.place(rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0, 2 * np.pi))
            x1, y1, x2, y2 = (int(v) for v in _geom_box(geom, h, w))
            if x2 <= x1 or y2 <= y1:
                continue
            # Only the new shape's box changes: recount visibility there.
            roi = labels[y1:y2, x1:x2]
            trial = roi.copy()
            _draw(trial, _shifted(geom, x1, y1), len(shapes) + 1, aa=False)
            new_counts = (
                counts - np.bincount(roi.ravel(), minlength=n + 1) + np.bincount(trial.ravel(), minlength=n + 1)
            )
            area = _geom_area(geom)
            vis = new_counts[1 : len(shapes) + 2] / np.maximum(np.asarray(areas + [area]), 1.0)
            if vis.min() >= min_visible:
                roi[...] = trial
                counts = new_counts
                shapes.append((shape, geom))
                areas.append(area)
                break
    img = bg
    for shape, geom in shapes:
        _draw(img, geom, shape.color, aa=True)
    img = _finish(rng, img, blur_p, noise_max)
    boxes = np.zeros((len(shapes), 5), np.float32)
    for k, (shape, geom) in enumerate(shapes):
        boxes[k, 0] = shape.cls
        boxes[k, 1:] = _geom_box(geom, h, w)
    return img, boxes


def make_dataset(
    seed: int, n: int, size: tuple[int, int] = (256, 256), **kwargs
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """``n`` scenes from one seed: yields (BGR uint8 image, boxes (m, 5)); same seed, same scenes."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield render_scene(rng, size, **kwargs)


# --------------------------------------------------------------------------- video


def make_video_frames(
    seed: int,
    n_frames: int,
    size: tuple[int, int] = (480, 640),
    n_objects: int = 9,
    min_visible: float = VIDEO_MIN_VISIBLE,
) -> Iterator[VideoFrame]:
    """Frames of shapes moving on smooth (sinusoidal) paths and spinning, occluding each other.

    The background is fixed per video (fresh pixel noise each frame). Each frame carries the
    boxes of the shapes at least ``min_visible`` visible and their track ids (the shape's index,
    also its drawing order: higher ids are drawn over lower ones). ``n_frames / VIDEO_FPS`` is the
    duration at the intended frame rate.
    """
    rng = np.random.default_rng(seed)
    h, w = int(size[0]), int(size[1])
    scale = float(max(h, w))
    bg = _background(rng, h, w)
    bg_mean = bg.reshape(-1, 3).mean(0)
    blur = float(rng.uniform(0.6, 1.2)) if rng.random() < 0.5 else 0.0
    noise = float(rng.uniform(2, 8))
    tracks = []
    for _ in range(n_objects):
        shape = Shape.random(rng, scale, bg_mean)
        m = shape.radius * 0.8
        ax, ay = rng.uniform(0.1, 0.45) * w, rng.uniform(0.1, 0.45) * h
        cx0 = rng.uniform(m + ax, max(w - m - ax, m + ax + 1))
        cy0 = rng.uniform(m + ay, max(h - m - ay, m + ay + 1))
        tracks.append(
            dict(
                shape=shape,
                cx=cx0,
                cy=cy0,
                ax=ax,
                ay=ay,
                fx=rng.uniform(0.05, 0.25) * rng.choice([-1, 1]),
                fy=rng.uniform(0.05, 0.25) * rng.choice([-1, 1]),
                px=rng.uniform(0, 2 * np.pi),
                py=rng.uniform(0, 2 * np.pi),
                a0=rng.uniform(0, 2 * np.pi),
                spin=rng.uniform(-1.5, 1.5),
            )
        )
    frame_rng = np.random.default_rng([seed, 1])
    for f in range(n_frames):
        t = f / VIDEO_FPS
        labels = np.zeros((h, w), np.uint8)
        img = bg.copy()
        geoms, areas = [], []
        for k, tr in enumerate(tracks):
            cx = tr["cx"] + tr["ax"] * math.sin(2 * np.pi * tr["fx"] * t + tr["px"])
            cy = tr["cy"] + tr["ay"] * math.sin(2 * np.pi * tr["fy"] * t + tr["py"])
            geom = tr["shape"].place(cx, cy, tr["a0"] + tr["spin"] * t)
            _draw(labels, geom, k + 1, aa=False)
            _draw(img, geom, tr["shape"].color, aa=True)
            geoms.append(geom)
            areas.append(_geom_area(geom))
        if blur:
            img = cv2.GaussianBlur(img, (0, 0), blur)
        img = np.clip(img + _noise(frame_rng, h, w) * np.float32(noise), 0, 255).astype(np.uint8)
        vis = _visible_fractions(labels, areas)
        keep = np.flatnonzero(vis >= min_visible)
        boxes = np.zeros((len(keep), 5), np.float32)
        for j, k in enumerate(keep):
            boxes[j, 0] = tracks[k]["shape"].cls
            boxes[j, 1:] = _geom_box(geoms[k], h, w)
        yield VideoFrame(img, boxes, keep.astype(np.int64))
