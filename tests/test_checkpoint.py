"""YOLOv5 checkpoints made by our own code load back exactly; malicious pickles do not run."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from clo_export.demo.run import BUNDLED_MODEL as DEMO_MODEL
from clo_export.errors import CloExportError
from clo_export.models import checkpoint
from clo_export.models.checkpoint import load, save_yolov5
from clo_export.models.yolo import DetectionModel
from tests import yolov5_standin


def fp16_rounded(model: DetectionModel) -> DetectionModel:
    """The model with its weights rounded through FP16, as YOLOv5 stores them."""
    import copy

    m = copy.deepcopy(model)
    m.load_state_dict({k: v.half().float() if v.is_floating_point() else v for k, v in model.state_dict().items()})
    return m


@pytest.mark.parametrize("layout", ["stripped", "training"])
@pytest.mark.parametrize("attention_module", ["models.common", "models.CloAttention"])
def test_yolov5_checkpoint_round_trip(small_model, tmp_path, layout, attention_module):
    path = save_yolov5(
        small_model, tmp_path / "best.pt", layout=layout, opt={"imgsz": 640}, attention_module=attention_module
    )
    raw = zipfile.ZipFile(path).read(next(n for n in zipfile.ZipFile(path).namelist() if n.endswith("data.pkl")))
    for name in (b"models.yolo", b"DetectionModel", attention_module.encode()):
        assert name in raw
    assert b"efficientnet_pytorch" not in raw and b"numpy" not in raw and b"clo_export" not in raw
    loaded = load(path)
    assert loaded.source_format.startswith("YOLOv5 " + layout)
    assert loaded.names == {0: "circle", 1: "square", 2: "star"} and loaded.imgsz_hint == (640, 640)
    assert next(loaded.model.parameters()).dtype == torch.float32 and not loaded.model.training
    x = torch.rand(2, 3, 256, 256)
    with torch.no_grad():
        out = loaded.model(x)
        assert torch.equal(out, fp16_rounded(small_model)(x))  # identical once weights are FP16-rounded
        diff = (out - small_model(x)).abs()
    assert diff[..., :4].max() < 0.05 and diff[..., 4:].max() < 1e-3  # FP16 rounding level (pixels, probabilities)


def test_training_layout_prefers_ema(small_model, tmp_path):
    path = save_yolov5(small_model, tmp_path / "last.pt", layout="training", epoch=7)
    loaded = load(path)
    assert loaded.epoch == 7 and "(ema)" in loaded.source_format


def test_bare_state_dict_with_and_without_cfg(small_model, small_cfg, tmp_path):
    import yaml

    sd_path = tmp_path / "weights.pt"
    torch.save({k: v.half() for k, v in small_model.state_dict().items()}, sd_path)
    cfg_path = tmp_path / "model.yaml"
    cfg_path.write_text(yaml.safe_dump(small_cfg))
    x = torch.rand(1, 3, 256, 256)
    ref = fp16_rounded(small_model)
    for cfg in (cfg_path, None):
        loaded = load(sd_path, cfg=cfg)
        assert loaded.source_format == "state dict" and loaded.nc == 3  # nc read off the Detect weights without cfg
        with torch.no_grad():
            assert torch.equal(loaded.model(x), ref(x))


def test_state_dict_that_does_not_fit_says_what_differs(small_model, tmp_path):
    sd = dict(small_model.state_dict())
    sd.pop("model.9.proj.weight")
    torch.save(sd, tmp_path / "w.pt")
    with pytest.raises(CloExportError, match=r"missing \['model.9.proj.weight'\].*--cfg"):
        load(tmp_path / "w.pt", cfg=None)


def test_trained_hyperparameters_are_read_from_the_pickled_block(small_cfg, tmp_path):
    import copy

    cfg = copy.deepcopy(small_cfg)
    cfg["backbone"][9] = [-1, 1, "EfficientAttention", [8, [4, 4], [5], 2]]
    model = DetectionModel(cfg).eval()
    path = save_yolov5(model, tmp_path / "w2.pt")
    # simulate a user who edited the default in their pasted code: the YAML says [] but the block has window 2
    ckpt_cfg = copy.deepcopy(small_cfg)
    model.yaml = ckpt_cfg
    path = save_yolov5(model, tmp_path / "w2.pt")
    loaded = load(path)
    assert loaded.model.model[9].window_size == 2
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), fp16_rounded(model)(x))


class Exploit:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("wrap", ["zip", "legacy"])
def test_malicious_pickle_is_refused_and_nothing_runs(tmp_path, wrap):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {"model": Exploit(str(marker)), "epoch": -1}
    if wrap == "zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(CloExportError) as e:
        load(path)
    assert "system" in str(e.value) and "nothing from the file was executed" in str(e.value)
    assert not marker.exists()


def test_non_checkpoint_and_missing_files(tmp_path):
    junk = tmp_path / "notes.pt"
    junk.write_text("not a checkpoint")
    with pytest.raises(CloExportError, match="is not a readable PyTorch checkpoint"):
        load(junk)
    with pytest.raises(CloExportError, match="does not exist"):
        load(tmp_path / "missing.pt")
    torch.save({"hello": "world"}, tmp_path / "dict.pt")
    with pytest.raises(CloExportError, match="not a YOLOv5 checkpoint"):
        load(tmp_path / "dict.pt")


class GhostBlock(torch.nn.Module):
    """A block clo-export does not know."""


def test_unknown_class_in_checkpoint_suggests_a_plugin(small_model, tmp_path):
    import sys
    import types

    mod = types.ModuleType("models.extra")
    mod.GhostBlock = GhostBlock
    saved = {k: sys.modules.get(k) for k in ("models", "models.extra")}
    sys.modules.update({"models": types.ModuleType("models"), "models.extra": mod})
    GhostBlock.__module__ = "models.extra"
    try:
        torch.save({"model": GhostBlock()}, tmp_path / "ghost.pt")
    finally:
        GhostBlock.__module__ = __name__
        for k, v in saved.items():
            sys.modules.pop(k) if v is None else sys.modules.__setitem__(k, v)
    with pytest.raises(CloExportError, match=r"'models.extra.GhostBlock'.*--plugin"):
        load(tmp_path / "ghost.pt")


def test_names_stored_as_a_list_come_back_as_a_dict(small_model, tmp_path):
    import copy

    model = copy.deepcopy(small_model)
    model.names = ["a", "b", "c"]  # older YOLOv5 releases store a list
    loaded = load(save_yolov5(model, tmp_path / "list.pt"))
    assert loaded.names == {0: "a", 1: "b", 2: "c"}


def standin_output(path: Path, x: torch.Tensor) -> torch.Tensor:
    """What YOLOv5's export.py computes for ``x`` after attempt_load (stand-in clone, see tests/yolov5_standin.py)."""
    return yolov5_standin.export_forward(yolov5_standin.attempt_load(path), x)


def test_a_yolov5_clone_loads_what_we_write(small_model, tmp_path):
    opt = {"imgsz": np.int64(256), "hyp": {"lr0": np.float32(0.01)}}
    path = save_yolov5(small_model, tmp_path / "best.pt", opt=opt, best_fitness=np.float64(0.5))
    ckpt = torch.load(path, weights_only=False, pickle_module=yolov5_standin.ClonePickle)  # no NumPy in the file
    assert ckpt["best_fitness"] is None and ckpt["opt"] == {"imgsz": 256, "hyp": {"lr0": pytest.approx(0.01)}}
    det = ckpt["model"].model[-1]
    assert type(det) is yolov5_standin.Detect and len(det.grid) == len(det.anchor_grid) == det.nl
    x = torch.rand(2, 3, 256, 384)
    out = standin_output(path, x)  # fused, FP32, export-mode forward of YOLOv5's own classes
    with torch.no_grad():
        ref = load(path).model(x)
    assert out.shape == ref.shape
    torch.testing.assert_close(out[..., :4], ref[..., :4], atol=2e-3, rtol=1e-5)  # pixels; fusing reorders sums
    torch.testing.assert_close(out[..., 4:], ref[..., 4:], atol=1e-5, rtol=0)


def test_the_bundled_demo_model_loads_in_a_yolov5_clone():
    assert DEMO_MODEL.stat().st_size <= 6_000_000
    ckpt = torch.load(DEMO_MODEL, weights_only=False, pickle_module=yolov5_standin.ClonePickle)
    assert ckpt["best_fitness"] is None and ckpt["epoch"] == -1 and ckpt["optimizer"] is None
    x = torch.rand(1, 3, 256, 256)
    out = standin_output(DEMO_MODEL, x)
    with torch.no_grad():
        ref = load(DEMO_MODEL).model(x)
    torch.testing.assert_close(out[..., :4], ref[..., :4], atol=2e-3, rtol=1e-5)
    torch.testing.assert_close(out[..., 4:], ref[..., 4:], atol=1e-5, rtol=0)


def test_checkpoints_of_the_earlier_layout_still_load(small_model, tmp_path, monkeypatch):
    """Files written before the YOLOv5-clone layout: swish under efficientnet_pytorch.utils, no Detect
    grids, a NumPy best_fitness. A clone refuses them; our loader reads them."""
    import copy

    half = copy.deepcopy(small_model).half()
    monkeypatch.setitem(checkpoint.YOLOV5_MODULES, "efficientnet_pytorch.utils", ("MemoryEfficientSwish",))
    path = tmp_path / "old.pt"
    with checkpoint.pickled_as_yolov5():
        torch.save({"epoch": -1, "best_fitness": np.float64(0.0), "model": half, "ema": None, "optimizer": None}, path)
    with pytest.raises(ModuleNotFoundError):
        yolov5_standin.attempt_load(path)
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        assert torch.equal(load(path).model(x), fp16_rounded(small_model)(x))
