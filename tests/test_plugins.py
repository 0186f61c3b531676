"""User blocks: a --plugin file and an installed entry point add blocks without editing the package."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import pytest
import torch

from clo_export.errors import CloExportError
from clo_export.models.checkpoint import load, save_yolov5
from clo_export.models.yolo import DetectionModel
from clo_export.plugins import load_plugin_file, load_plugins
from clo_export.registry import REGISTRY

SE_BLOCK = '''
"""Squeeze-and-excitation, as users paste it into models/common.py."""
import torch
from torch import nn

from clo_export.registry import register_block


@register_block("SEBlock", kind="same", source="user")
class SEBlock(nn.Module):
    def __init__(self, c1, r=4):
        super().__init__()
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Sequential(nn.Conv2d(c1, c1 // r, 1), nn.SiLU(), nn.Conv2d(c1 // r, c1, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.fc(self.avg(x))
'''


def forget(path) -> None:
    """Undo a plugin's registration, as if this were a fresh process."""
    import clo_export.plugins

    REGISTRY.blocks.pop("SEBlock", None)
    REGISTRY.classes.pop("SEBlock", None)
    clo_export.plugins._loaded.discard(str(path.resolve()))


@pytest.fixture()
def se_plugin(tmp_path):
    path = tmp_path / "se_block.py"
    path.write_text(SE_BLOCK)
    yield path
    forget(path)


def test_plugin_file_adds_a_block_that_builds_saves_and_loads(se_plugin, small_cfg, tmp_path):
    cfg = copy.deepcopy(small_cfg)
    cfg["backbone"][9] = [-1, 1, "SEBlock", [8]]
    with pytest.raises(CloExportError, match="unknown module 'SEBlock'"):
        DetectionModel(cfg)
    load_plugin_file(se_plugin)
    model = DetectionModel(cfg).eval()
    assert model.model[9].fc[0].out_channels == 256 // 8
    path = save_yolov5(model, tmp_path / "se.pt")
    forget(se_plugin)
    with pytest.raises(CloExportError, match=r"models.common.SEBlock.*--plugin"):
        load(path)
    loaded = load(path, plugins=(se_plugin,))
    x = torch.rand(1, 3, 256, 256)
    half = copy.deepcopy(model)
    half.load_state_dict({k: v.half().float() for k, v in model.state_dict().items()})
    with torch.no_grad():
        assert torch.equal(loaded.model(x), half(x))


def test_broken_plugin_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(CloExportError, match=r"plugin '.*bad.py' failed to import: RuntimeError: boom"):
        load_plugin_file(bad)
    with pytest.raises(CloExportError, match="missing.py' does not exist"):
        load_plugin_file(tmp_path / "missing.py")
    (tmp_path / "block.txt").write_text("x = 1\n")
    with pytest.raises(CloExportError, match="is not a .py file"):
        load_plugin_file(tmp_path / "block.txt")


def test_entry_point_plugin_is_discovered(tmp_path):
    """A real installed distribution (dist-info on sys.path) exposing clo_export.plugins."""
    (tmp_path / "se_pkg.py").write_text(SE_BLOCK)
    dist = tmp_path / "se_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: se-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[clo_export.plugins]\nse = se_pkg\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from clo_export.plugins import load_plugins
        from clo_export.registry import REGISTRY
        load_plugins()
        print("SEBlock" in REGISTRY.blocks)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"


def test_builtin_blocks_are_registered(plugins_loaded):
    load_plugins()
    for name in ("Conv", "Bottleneck", "C3", "SPPF", "Concat", "nn.Upsample", "Detect", "EfficientAttention"):
        assert name in REGISTRY.blocks
    for name in ("AttnMap", "MemoryEfficientSwish", "DetectionModel", "Model"):
        assert name in REGISTRY.classes
