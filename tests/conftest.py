"""Shared fixtures: models and checkpoints are made in code, never downloaded."""

from __future__ import annotations

import copy

import pytest

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


def randomize(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm non-trivial statistics so fusing and loading are really tested."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model


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
