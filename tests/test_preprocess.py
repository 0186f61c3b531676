"""Letterbox, preprocessing and box mapping against hand-computed numbers."""

from __future__ import annotations

import numpy as np
import pytest

from clo_export.data.preprocess import LetterboxInfo, letterbox, preprocess, preprocess_batch, scale_boxes
from clo_export.errors import CloExportError


def frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random BGR uint8 frame."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    ("hw", "new", "ratio", "pad", "out_hw"),
    [
        ((480, 640), (640, 640), 1.0, (0, 80), (640, 640)),  # dh = 160 -> 80 top, 80 bottom
        ((720, 1280), (640, 640), 0.5, (0, 140), (640, 640)),  # 1280x720 -> 640x360, dh = 280
        ((481, 640), (640, 640), 1.0, (0, 79), (640, 640)),  # dh = 159: round(79.4) = 79 top, round(79.6) = 80 bottom
        ((640, 479), (640, 640), 1.0, (80, 0), (640, 640)),  # dw = 161: round(80.4) = 80 left, 81 right
        ((1080, 1920), (384, 640), 1 / 3, (0, 12), (384, 640)),  # 1920x1080 -> 640x360, dh = 24
    ],
)
def test_letterbox_numbers(hw, new, ratio, pad, out_hw) -> None:
    out, info = letterbox(frame(*hw), new)
    assert out.shape == (*out_hw, 3)
    assert info == LetterboxInfo(ratio=pytest.approx(ratio), pad=pad, orig_shape=hw, new_shape=out_hw)


def test_letterbox_auto_pads_to_stride_only() -> None:
    assert letterbox(frame(480, 640), 640, auto=True)[0].shape == (480, 640, 3)
    out, info = letterbox(frame(500, 640), 640, auto=True)  # dh = 140 % 32 = 12 -> 6 + 6
    assert out.shape == (512, 640, 3) and info.pad == (0, 6)


def test_letterbox_no_scaleup() -> None:
    out, info = letterbox(frame(240, 320), 640, scaleup=False)
    assert info.ratio == 1.0 and info.pad == (160, 200) and out.shape == (640, 640, 3)
    assert letterbox(frame(240, 320), 640)[1].ratio == 2.0


def test_letterbox_pad_colour_and_untouched_content() -> None:
    img = frame(480, 640)
    out, _ = letterbox(img, 640)
    assert (out[:80] == 114).all() and (out[560:] == 114).all()
    np.testing.assert_array_equal(out[80:560], img)  # same size: no resize, pixels copied as they are


def test_preprocess_dtype_shape_range() -> None:
    x, info = preprocess(frame(720, 1280), (640, 640))
    assert x.shape == (1, 3, 640, 640) and x.dtype == np.float32 and x.flags.c_contiguous
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert x[0, :, 0, 0] == pytest.approx(114 / 255)
    assert info.ratio == 0.5
    assert preprocess(frame(10, 10), 32, dtype=np.float16)[0].dtype == np.float16


@pytest.mark.parametrize("h, w", [(480, 640), (720, 1280)])
def test_preprocess_is_bit_identical_to_yolov5s_float_division(h: int, w: int) -> None:
    img = frame(h, w, seed=3)
    padded, _ = letterbox(img, 640)
    want = np.ascontiguousarray(padded[..., ::-1].transpose(2, 0, 1)).astype(np.float32)[None] / np.float32(255)
    got = preprocess(img, 640)[0]
    assert got.dtype == np.float32 and np.array_equal(got, want)
    assert np.array_equal(preprocess(img, 640, dtype=np.float16)[0], want.astype(np.float16))


def test_preprocess_converts_bgr_to_rgb() -> None:
    blue = np.zeros((64, 64, 3), np.uint8)
    blue[..., 0] = 255  # pure blue in OpenCV's BGR order
    x, _ = preprocess(blue, 64)
    assert (x[0, 2] == 1.0).all() and (x[0, :2] == 0.0).all()


def test_preprocess_batch_stacks() -> None:
    x, infos = preprocess_batch([frame(480, 640), frame(720, 1280, seed=1)], 640)
    assert x.shape == (2, 3, 640, 640)
    assert [i.pad for i in infos] == [(0, 80), (0, 140)]
    np.testing.assert_array_equal(x[1:], preprocess(frame(720, 1280, seed=1), 640)[0])
    with pytest.raises(CloExportError, match="no images"):
        preprocess_batch([], 640)


def test_preprocess_rejects_non_bgr() -> None:
    with pytest.raises(CloExportError, match=r"\(H, W, 3\)"):
        preprocess(np.zeros((64, 64), np.uint8), 64)
    with pytest.raises(CloExportError, match="uint8"):
        preprocess(np.zeros((64, 64, 3), np.float32), 64)


@pytest.mark.parametrize("hw", [(720, 1280), (481, 640), (1080, 1920), (300, 200)])
def test_scale_boxes_inverts_letterbox(hw) -> None:
    _, info = letterbox(frame(*hw), 640)
    rng = np.random.default_rng(0)
    h, w = hw
    xy = rng.uniform(0, 1, (50, 2)) * [w, h]
    boxes = np.concatenate([xy, xy + rng.uniform(0, 1, (50, 2)) * ([w, h] - xy)], axis=1)
    left, top = info.pad
    forward = boxes * info.ratio + [left, top, left, top]
    back = scale_boxes(forward.astype(np.float32), info)
    assert back.dtype == np.float32
    np.testing.assert_allclose(back, boxes, rtol=1e-6, atol=1e-4)  # float32 spacing at 1920 px is 1.2e-4
    np.testing.assert_allclose(scale_boxes(forward, info), boxes, atol=1e-9)


def test_scale_boxes_clips_and_copies() -> None:
    _, info = letterbox(frame(720, 1280), 640)  # ratio 0.5, pad (0, 140)
    boxes = np.array([[-10, 100, 700, 600, 0.9, 3]], np.float32)  # leaves the frame left, right and bottom
    out = scale_boxes(boxes, info)
    np.testing.assert_allclose(out, [[0, 0, 1280, 720, 0.9, 3]])
    assert boxes[0, 0] == -10  # input untouched
