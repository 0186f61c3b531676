"""Shared fixtures: models, checkpoints, videos and cameras are made in code, never downloaded."""

from __future__ import annotations

import copy
import shutil
import sys
from pathlib import Path

import pytest

from tests.helpers import randomize

torch = pytest.importorskip("torch")


@pytest.fixture(scope="session")
def plugins_loaded() -> None:
    from clo_export.blocks import load_plugins

    load_plugins()


@pytest.fixture(scope="session")
def seed_cfg(plugins_loaded) -> dict:
    """The bundled seed config (nc=80) as a dict."""
    from clo_export.models.yolo import DEFAULT_CFG, load_cfg

    return load_cfg(DEFAULT_CFG)


@pytest.fixture(scope="session")
def small_cfg(seed_cfg) -> dict:
    """The seed architecture with 3 classes: same blocks and wiring, smaller head."""
    cfg = copy.deepcopy(seed_cfg)
    cfg["nc"] = 3
    return cfg


@pytest.fixture(scope="session")
def small_model(small_cfg):
    """An eval-mode seed-architecture model with 3 classes and randomised BatchNorm."""
    from clo_export.models.yolo import DetectionModel

    torch.manual_seed(0)
    return randomize(DetectionModel(small_cfg, names=["circle", "square", "star"])).eval()


@pytest.fixture(scope="session")
def small_ckpt(small_model, tmp_path_factory):
    """The small model as a YOLOv5 stripped checkpoint (FP16, pickled under YOLOv5's module paths)."""
    from clo_export.models.checkpoint import save_yolov5

    return save_yolov5(small_model, tmp_path_factory.mktemp("ckpt") / "small.pt", opt={"imgsz": 256})


@pytest.fixture(scope="session")
def art():
    """The small detector's checkpoint, ONNX exports, a video and images (tests/helpers.py)."""
    from tests.helpers import artifacts

    return artifacts()


@pytest.fixture
def ws(tmp_path, monkeypatch) -> Path:
    """A folder with real inputs: m.pt, m.onnx, v.mp4, imgs/ (3 images); the test runs inside it."""
    from tests.helpers import artifacts

    a = artifacts()
    root = tmp_path / "w"
    root.mkdir()
    for src in (a.pt, a.onnx, a.video):
        shutil.copy(src, root / src.name)
    shutil.copytree(a.images, root / "imgs")
    monkeypatch.chdir(root)
    return root


@pytest.fixture(scope="module")
def tally():
    """The fault suite's count of cases, printed at the end of a module (``-s``)."""
    from tests.faults_harness import FAULTS

    yield
    total = sum(FAULTS.values())
    sys.stderr.write(
        f"\nfault-injection cases: {total} ({dict(FAULTS)}); 0 tracebacks, 0 damaged inputs, 0 leftovers\n"
    )


@pytest.fixture
def camera():
    """A real RTSP camera on 127.0.0.1 (tests/rtsp_camera.py); skipped, or failed under CLO_EXPORT_REQUIRE_RTSP=1."""
    from tests.cameras import running_cameras

    with running_cameras(1) as cams:
        yield cams[0]


@pytest.fixture
def fake_trt(monkeypatch):
    """A function installing a recording tensorrt of a given version (tests/fake_tensorrt.py)."""
    from tests.fake_tensorrt import forget_tensorrt, install

    yield lambda version: install(monkeypatch, version)
    forget_tensorrt()
