"""User blocks: a --plugin file and an installed entry point add blocks without editing the package."""

from __future__ import annotations

import copy
import logging
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

import clo_export.blocks
from clo_export.blocks import load_plugin_file, load_plugins
from clo_export.errors import CloExportError
from clo_export.models.checkpoint import load, save_yolov5
from clo_export.models.yolo import DetectionModel
from clo_export.registry import REGISTRY, register_block

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
    import clo_export.blocks

    REGISTRY.blocks.pop("SEBlock", None)
    REGISTRY.classes.pop("SEBlock", None)
    clo_export.blocks._loaded.discard(str(path.resolve()))


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
        from clo_export.blocks import load_plugins
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


@pytest.fixture()
def registry_snapshot(plugins_loaded):
    """Put the registry back as it was after a test that replaces built-in blocks."""
    blocks, classes = dict(REGISTRY.blocks), dict(REGISTRY.classes)
    yield
    REGISTRY.blocks.clear()
    REGISTRY.blocks.update(blocks)
    REGISTRY.classes.clear()
    REGISTRY.classes.update(classes)


CONV_PLUGIN = """
from torch import nn
from clo_export.registry import register_block


@register_block("Conv", kind="channels", source="user")
class Conv(nn.Module):
    def __init__(self, c1, c2, k=1, s=1):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, k // 2)

    def forward(self, x):
        return self.conv(x)
"""


def test_a_plugin_replacing_a_builtin_block_is_named_in_a_warning(registry_snapshot, tmp_path, caplog):
    builtin = REGISTRY.blocks["Conv"].cls
    path = tmp_path / "my_conv.py"
    path.write_text(CONV_PLUGIN)
    try:
        with caplog.at_level(logging.WARNING, logger="clo_export"):
            load_plugin_file(path)
    finally:
        clo_export.blocks._loaded.discard(str(path.resolve()))
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    replaced = REGISTRY.blocks["Conv"]
    assert replaced.cls is not builtin and replaced.source == "user"
    assert "block 'Conv'" in warnings[0] and "override=True" in warnings[0]
    assert (
        f"{replaced.cls.__module__}.Conv (user)" in warnings[0]
        and "clo_export.blocks.yolov5.Conv (builtin)" in warnings[0]
    )


def test_override_true_replaces_a_block_without_a_warning(registry_snapshot, caplog):
    class Conv(nn.Module):
        pass

    with caplog.at_level(logging.WARNING, logger="clo_export"):
        register_block("Conv", Conv, kind="channels", source="user", override=True)
        register_block("Conv", Conv, kind="channels", source="user")  # the same class again: nothing to warn about
    assert REGISTRY.blocks["Conv"].cls is Conv
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_subclass_keeps_its_parents_export_hook(small_model):
    """An unregistered subclass of a registered block is found through its MRO; a registered one wins."""
    from clo_export.export.mode import export_model

    attention = REGISTRY.blocks["EfficientAttention"]

    class TunedAttention(attention.cls):
        pass

    m = copy.deepcopy(small_model)
    m.model[9].__class__ = TunedAttention
    assert REGISTRY.block_for(m.model[9]) is attention
    exported = export_model(m, (256, 256))
    assert type(exported.model[9]) is TunedAttention
    assert exported.model[9].export_shape == (1, 256, 8, 8)  # the hook ran: static shape at 256x256, stride 32
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), small_model(x), rtol=1e-4, atol=1e-3)  # the fused-vs-unfused tolerance

    class OwnBlock(attention.cls):
        pass

    try:
        register_block("OwnBlock", OwnBlock, kind="same", source="user")
        m.model[9].__class__ = OwnBlock
        assert REGISTRY.block_for(m.model[9]).name == "OwnBlock"
    finally:
        REGISTRY.blocks.pop("OwnBlock")
        REGISTRY.classes.pop("OwnBlock")
