"""YOLOv5 letterbox and the one preprocessing function every runtime path uses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import DTypeLike

from clo_export.errors import CloExportError

_UNIT = (np.arange(256, dtype=np.float32) / np.float32(255.0))[None]  # v -> v / 255, bit-identical to dividing


@dataclass(frozen=True)
class LetterboxInfo:
    """How a frame was letterboxed: enough to map boxes back onto the original frame."""

    ratio: float
    pad: tuple[int, int]
    orig_shape: tuple[int, int]
    new_shape: tuple[int, int]


def _as_hw(shape: int | Sequence[int]) -> tuple[int, int]:
    """Normalise an int or (h, w) pair to a (h, w) tuple of ints."""
    if isinstance(shape, (int, np.integer)):
        return int(shape), int(shape)
    if len(shape) != 2:
        raise CloExportError(
            f"image size must be an int or (height, width), got {shape!r}; pass e.g. 640 or (640, 640)"
        )
    return int(shape[0]), int(shape[1])


def letterbox(
    img: np.ndarray,
    new_shape: int | tuple[int, int] = (640, 640),
    color: tuple[int, int, int] = (114, 114, 114),
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, LetterboxInfo]:
    """Resize keeping aspect ratio and pad to `new_shape` (h, w) exactly as YOLOv5 does."""
    new_h, new_w = _as_hw(new_shape)
    h, w = img.shape[:2]
    r = min(new_h / h, new_w / w)
    if not scaleup:
        r = min(r, 1.0)
    unpad_w, unpad_h = int(round(w * r)), int(round(h * r))
    dw, dh = new_w - unpad_w, new_h - unpad_h
    if auto:
        dw, dh = dw % stride, dh % stride
    if (w, h) != (unpad_w, unpad_h):
        img = cv2.resize(img, (unpad_w, unpad_h), interpolation=cv2.INTER_LINEAR)
    top, bottom = int(round(dh / 2 - 0.1)), int(round(dh / 2 + 0.1))
    left, right = int(round(dw / 2 - 0.1)), int(round(dw / 2 + 0.1))
    img = cv2.copyMakeBorder(img, top, bottom, left, right, cv2.BORDER_CONSTANT, value=color)
    info = LetterboxInfo(ratio=r, pad=(left, top), orig_shape=(h, w), new_shape=(img.shape[0], img.shape[1]))
    return img, info


def preprocess(
    img_bgr: np.ndarray, imgsz: int | tuple[int, int], dtype: DTypeLike = np.float32
) -> tuple[np.ndarray, LetterboxInfo]:
    """Letterbox a BGR uint8 frame to the full `imgsz` and return a (1, 3, H, W) RGB tensor in [0, 1]."""
    if img_bgr.ndim != 3 or img_bgr.shape[2] != 3 or img_bgr.dtype != np.uint8:
        raise CloExportError(
            f"expected a uint8 BGR image of shape (H, W, 3), got {img_bgr.dtype} {img_bgr.shape}; "
            "read frames with cv2.imread / cv2.VideoCapture or convert with cv2.cvtColor"
        )
    img, info = letterbox(img_bgr, imgsz, auto=False)
    x = np.empty((1, 3, *img.shape[:2]), dtype=np.float32)
    for c, plane in enumerate(reversed(cv2.split(img))):  # BGR -> RGB planes, scaled in one pass each
        cv2.LUT(plane, _UNIT, dst=x[0, c])
    return x.astype(dtype, copy=False), info


def preprocess_batch(
    images: Sequence[np.ndarray], imgsz: int | tuple[int, int], dtype: DTypeLike = np.float32
) -> tuple[np.ndarray, list[LetterboxInfo]]:
    """Preprocess several frames into one (B, 3, H, W) batch."""
    if not images:
        raise CloExportError("preprocess_batch got no images; pass at least one frame")
    tensors, infos = zip(*(preprocess(img, imgsz, dtype) for img in images))
    return np.concatenate(tensors, axis=0), list(infos)


def scale_boxes(boxes_xyxy: np.ndarray, info: LetterboxInfo) -> np.ndarray:
    """Map (n, 4+) xyxy boxes from the letterboxed frame back onto the original frame, clipped."""
    boxes = np.array(boxes_xyxy, dtype=np.result_type(boxes_xyxy, np.float32))
    left, top = info.pad
    boxes[..., [0, 2]] -= left
    boxes[..., [1, 3]] -= top
    boxes[..., :4] /= info.ratio
    h, w = info.orig_shape
    boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
    boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes
