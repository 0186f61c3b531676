"""What the tests share, made in code: frames, videos, images, a small detector and its exports.

The artifacts (checkpoint, ONNX, video, images) are built once per process (functools.cache) in a
temporary folder; conftest.py's ``art`` fixture hands them out.
"""

from __future__ import annotations

import atexit
import copy
import functools
import shutil
import tempfile
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from tests.untrained import follow_the_image

if TYPE_CHECKING:
    import torch
    import typer

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


def make_video(
    path: Path,
    frames: int = 24,
    fps: float = 12.0,
    size: tuple[int, int] = (320, 240),
    seed: int = 0,
    fourcc: str = "mp4v",
) -> Path:
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

    from clo_export.blocks import load_plugins
    from clo_export.models.yolo import DEFAULT_CFG, DetectionModel, load_cfg

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


def read_video(path) -> tuple[int, float, tuple[int, int]]:
    """Frames, fps and size of a video, as OpenCV decodes it."""
    cap = cv2.VideoCapture(str(path))
    n = 0
    while cap.read()[0]:
        n += 1
    fps, w, h = cap.get(cv2.CAP_PROP_FPS), cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)
    cap.release()
    return n, fps, (int(w), int(h))


def write_images(folder: Path, n: int, seed: int = 0, nested: bool = True, ext: str = ".jpg") -> list[Path]:
    """Real image files of drawn shapes on noise, some in a sub-folder, of varying sizes."""
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        h, w = int(rng.integers(90, 200)), int(rng.integers(90, 200))
        img = (rng.random((h, w, 3)) * 80).astype(np.uint8)
        for _ in range(3):
            colour = tuple(int(c) for c in rng.integers(80, 255, 3))
            centre = (int(rng.integers(10, w - 10)), int(rng.integers(10, h - 10)))
            r = int(rng.integers(8, 30))
            if rng.random() < 0.5:
                cv2.circle(img, centre, r, colour, -1)
            else:
                cv2.rectangle(img, (centre[0] - r, centre[1] - r), (centre[0] + r, centre[1] + r), colour, -1)
        sub = folder / "sub" if nested and i % 3 == 0 else folder
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img_{i:03d}{ext}"
        assert cv2.imwrite(str(path), img)
        paths.append(path)
    return paths


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm non-trivial statistics so fusing and loading are really tested."""
    import torch

    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


@lru_cache(maxsize=1)
def small_onnx() -> Path:
    """The seed architecture, 3 classes, 256x256, random weights with raised obj/cls biases so it detects things.

    At 128 the P5 map is one attention window and onnxsim folds the softmax away, hence 256."""
    import torch

    from clo_export.blocks import load_plugins
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load, save_yolov5
    from clo_export.models.yolo import DEFAULT_CFG, DetectionModel, load_cfg

    load_plugins()
    cfg = copy.deepcopy(load_cfg(DEFAULT_CFG))
    cfg["nc"] = 3
    torch.manual_seed(0)
    model = randomize(DetectionModel(cfg, names=["circle", "square", "star"])).eval()
    with torch.no_grad():
        for conv in model.detect.m:
            bias = conv.bias.view(model.detect.na, -1)
            bias[:, 4] += 4.0
            bias[:, 5:] += 2.0
    root = Path(tempfile.mkdtemp(prefix="clo-calib-"))
    atexit.register(shutil.rmtree, root, True)
    save_yolov5(model, root / "small.pt")
    export_onnx(load(root / "small.pt"), root / "small.onnx", ExportOptions(imgsz=(256, 256), simplifier="onnxsim"))
    write_images(root / "calib", 32)
    return root / "small.onnx"


class InterruptingSource:
    """Wraps a source and raises KeyboardInterrupt (as Ctrl-C would) after ``n`` frames."""

    def __init__(self, source, n):
        self.source, self.n = source, n
        self.live, self.skipped, self.kind = False, 0, source.kind

    def __iter__(self):
        for i, frame in enumerate(self.source):
            if i == self.n:
                raise KeyboardInterrupt
            yield frame

    def __getattr__(self, name):  # stop flag, reconnect counts: the wrapped source's
        return getattr(self.source, name)


def make_app() -> typer.Typer:
    """The quantize command alone (main.py registers it in the real app)."""
    import typer

    from clo_export.cli.quantize import quantize

    app = typer.Typer()
    app.command("quantize")(quantize)

    @app.callback()
    def main() -> None:
        pass

    return app
