"""The procedural shapes generator: determinism, exact boxes, video motion and ground truth."""

from __future__ import annotations

import numpy as np
import pytest

from clo_export.demo.shapes import NAMES, NC, VideoFrame, make_dataset, make_video_frames, render_scene


def test_names() -> None:
    assert NAMES == ["circle", "square", "triangle", "star", "cross"] and NC == 5


def test_same_seed_same_scenes() -> None:
    a = list(make_dataset(7, 4, (128, 192)))
    b = list(make_dataset(7, 4, (128, 192)))
    for (ia, ba), (ib, bb) in zip(a, b):
        assert np.array_equal(ia, ib) and np.array_equal(ba, bb)
    c = list(make_dataset(8, 4, (128, 192)))
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(a, c))


def test_scene_format_and_boxes_in_frame() -> None:
    n = 0
    for img, boxes in make_dataset(1, 20, (160, 224)):
        assert img.shape == (160, 224, 3) and img.dtype == np.uint8
        assert boxes.dtype == np.float32 and boxes.ndim == 2 and boxes.shape[1] == 5
        cls, x1, y1, x2, y2 = boxes.T
        assert np.all((cls >= 0) & (cls < NC) & (cls == np.round(cls)))
        assert np.all((x1 >= 0) & (y1 >= 0) & (x2 <= 224) & (y2 <= 160))
        assert np.all((x2 - x1 >= 2) & (y2 - y1 >= 2))
        n += len(boxes)
    assert n >= 40  # 1..8 shapes per scene


def foreground_box(img: np.ndarray, bg: np.ndarray) -> np.ndarray:
    """Pixel-edge box of the pixels that clearly differ from the flat background colour."""
    diff = np.abs(img.astype(np.int16) - bg.astype(np.int16)).max(-1) > 40
    ys, xs = np.nonzero(diff)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_single_shape_box_is_tight(seed: int) -> None:
    rng = np.random.default_rng(seed)
    img, boxes = render_scene(rng, (128, 160), n_objects=(1, 1), background="flat", blur_p=0.0, noise_max=0.0)
    assert len(boxes) == 1
    # Flat background without noise: its colour is the most common pixel.
    colors, counts = np.unique(img.reshape(-1, 3), axis=0, return_counts=True)
    fg = foreground_box(img, colors[counts.argmax()])
    assert np.abs(fg - boxes[0, 1:]).max() <= 1.5, (NAMES[int(boxes[0, 0])], fg, boxes[0])


def test_all_classes_appear() -> None:
    classes = np.concatenate([b[:, 0] for _, b in make_dataset(3, 30, (128, 128))])
    assert set(classes.astype(int).tolist()) == set(range(NC))


def test_video_moves_smoothly_with_ground_truth() -> None:
    frames = list(make_video_frames(5, 40, size=(240, 320)))
    assert len(frames) == 40
    for f in frames:
        assert isinstance(f, VideoFrame)
        assert f.image.shape == (240, 320, 3) and f.image.dtype == np.uint8
        assert f.boxes.shape == (len(f.track_ids), 5) and f.boxes.dtype == np.float32
        assert len(np.unique(f.track_ids)) == len(f.track_ids)
        assert np.all(f.boxes[:, 1:] >= 0) and np.all(f.boxes[:, [1, 3]] <= 320) and np.all(f.boxes[:, [2, 4]] <= 240)
    assert np.mean([len(f.boxes) for f in frames]) >= 5
    moved = []
    for a, b in zip(frames, frames[1:]):
        common = np.intersect1d(a.track_ids, b.track_ids)
        ca = {t: (r[1:3] + r[3:5]) / 2 for t, r in zip(a.track_ids, a.boxes)}
        cb = {t: (r[1:3] + r[3:5]) / 2 for t, r in zip(b.track_ids, b.boxes)}
        step = [np.abs(ca[t] - cb[t]).max() for t in common]
        assert max(step) <= 12  # smooth: a few pixels per frame at 320x240
        moved.extend(step)
    assert np.mean(moved) > 0.3  # and the shapes do move
    # Pixels change from frame to frame, and the sequence is reproducible.
    assert not np.array_equal(frames[0].image, frames[10].image)
    again = next(iter(make_video_frames(5, 1, size=(240, 320))))
    assert np.array_equal(again.image, frames[0].image) and np.array_equal(again.boxes, frames[0].boxes)


def test_video_occlusion_drops_mostly_hidden_boxes() -> None:
    # Track ids are drawing order; over a long run some shape must be hidden by another at times.
    frames = list(make_video_frames(2, 90, size=(240, 320), n_objects=10))
    counts = [len(f.boxes) for f in frames]
    assert max(counts) <= 10 and min(counts) < 10
