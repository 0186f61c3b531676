"""Models, videos and images for the clo-infer tests, made in code once per session (and checks of them).

Other test modules import :func:`artifacts`, :func:`make_video` and :func:`make_images` from here;
the artifacts are built once per process (functools.cache) in a temporary folder.
"""

from __future__ import annotations

import atexit
import functools
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest

from tests.untrained import follow_the_image

IMGSZ = 128
NAMES = ["circle", "square", "star"]


def scene(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A blocky random frame with a few shapes: enough texture for a random model to react to."""
    w, h = size
    img = cv2.resize(rng.integers(0, 255, (6, 8, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    for _ in range(3):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(10, 50)), c, -1)
    return img


def make_video(path: Path, frames: int = 24, fps: float = 12.0, size: tuple[int, int] = (320, 240), seed: int = 0,
               fourcc: str = "mp4v") -> Path:
    """A short video written with cv2.VideoWriter."""
    rng = np.random.default_rng(seed)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    assert writer.isOpened()
    for _ in range(frames):
        writer.write(scene(rng, size))
    writer.release()
    return path


def make_images(folder: Path, n: int = 3, seed: int = 1) -> list[Path]:
    """A few images of different sizes and formats."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        p = folder / f"img{i}.{'png' if i % 2 else 'jpg'}"
        cv2.imwrite(str(p), scene(rng, (320 + 32 * i, 240 - 16 * i)))
        out.append(p)
    return out


@dataclass(frozen=True)
class Artifacts:
    root: Path
    pt: Path  # YOLOv5 stripped checkpoint, trained-at 128
    other_pt: Path  # same architecture and classes, different weights (a wrong reference)
    onnx: Path  # raw output0
    nms_onnx: Path  # in-graph NMS
    video: Path  # 24 frames, 320x240, 12 fps
    images: Path  # folder with 3 images


def detector(seed: int = 0):
    """The seed architecture (nc=3), untrained but detecting some 10 boxes per frame that move with the content."""
    import torch

    from clo_export.models.yolo import DEFAULT_CFG, DetectionModel, load_cfg
    from clo_export.blocks import load_plugins

    load_plugins()
    cfg = load_cfg(DEFAULT_CFG)
    cfg["nc"] = len(NAMES)
    torch.manual_seed(seed)
    model = DetectionModel(cfg, nc=len(NAMES), names=NAMES)
    rng = np.random.default_rng(seed)
    from clo_export.data.preprocess import preprocess_batch

    x = torch.from_numpy(preprocess_batch([scene(rng) for _ in range(8)], IMGSZ)[0])
    follow_the_image(model, x, obj_bias=2.5, cls_bias=1.0)  # some 10 boxes per frame
    return model


@functools.cache
def artifacts() -> Artifacts:
    """Build everything once per test process."""
    import copy

    import torch

    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.fileio import sha256_file
    from clo_export.models.checkpoint import LoadedModel, save_yolov5

    root = Path(tempfile.mkdtemp(prefix="clo-infer-tests-"))
    atexit.register(shutil.rmtree, root, True)
    model = detector(0).half().float()  # exactly what loading the FP16 checkpoint gives back
    pt = save_yolov5(model, root / "m.pt", opt={"imgsz": IMGSZ})
    other = copy.deepcopy(model)
    with torch.no_grad():
        for conv in other.detect.m:
            conv.weight.mul_(1.5)
    other_pt = save_yolov5(other, root / "other.pt", opt={"imgsz": IMGSZ})
    loaded = LoadedModel(model, pt, "YOLOv5 stripped checkpoint", sha256_file(pt), (IMGSZ, IMGSZ))
    size = (IMGSZ, IMGSZ)
    onnx = export_onnx(loaded, root / "m.onnx", ExportOptions(imgsz=size, simplifier="none")).path
    nms_onnx = export_onnx(loaded, root / "m_nms.onnx", ExportOptions(imgsz=size, simplifier="none", nms=True)).path
    video = make_video(root / "v.mp4")
    images = root / "images"
    make_images(images)
    return Artifacts(root, pt, other_pt, onnx, nms_onnx, video, images)


@pytest.fixture(scope="session")
def art() -> Artifacts:
    return artifacts()


def test_the_test_video_has_the_frames_and_fps_it_was_written_with(art):
    cap = cv2.VideoCapture(str(art.video))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 24 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    cap.release()


def test_the_test_model_detects_something_that_depends_on_the_image(art):
    from clo_export.backends.select import load_runner
    from clo_export.data.preprocess import preprocess
    from clo_export.postprocess import nms

    runner, info = load_runner(art.onnx, "cpu")
    rng = np.random.default_rng(5)
    with runner:
        dets = [nms(runner.infer({"images": preprocess(scene(rng), info.imgsz)[0]})["output0"])[0] for _ in range(3)]
    assert all(len(d) > 0 for d in dets)
    assert not np.array_equal(dets[0][:, :4], dets[1][:, :4])
