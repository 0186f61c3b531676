"""The seed architecture: YOLOv5 parse rules, names, parameter count, attention math, sizes."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch
from torch import nn

from clo_export.errors import CloExportError
from clo_export.models.yolo import DetectionModel
from clo_export.registry import REGISTRY
from tests import seed_reference


def test_seed_config_has_yolov5s_parameter_count(seed_cfg):
    model = DetectionModel(seed_cfg)
    assert sum(p.numel() for p in model.parameters()) == 2_186_525
    assert model.stride.tolist() == [8.0, 16.0, 32.0]
    assert [m.type for m in model.model][9] == "EfficientAttention"


def test_layer_attributes_and_state_dict_names_follow_yolov5(seed_cfg):
    model = DetectionModel(seed_cfg)
    assert [m.i for m in model.model] == list(range(26))
    assert model.model[20].f == [-1, 14] and model.model[23].f == [-1, 11]
    assert model.save == [4, 6, 11, 14, 18, 21, 24]
    keys = set(model.state_dict())
    for key in (
        "model.0.conv.weight",
        "model.0.bn.running_var",
        "model.2.m.0.cv1.conv.weight",
        "model.10.cv2.bn.bias",
        "model.9.convs.0.weight",
        "model.9.act_blocks.0.act_block.0.weight",
        "model.9.act_blocks.0.act_block.2.bias",
        "model.9.qkvs.0.weight",
        "model.9.global_q.weight",
        "model.9.global_kv.bias",
        "model.9.proj.weight",
        "model.25.anchors",
        "model.25.m.2.weight",
    ):
        assert key in keys, key
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(m.eps == 1e-3 and m.momentum == 0.03 for m in bns)


def test_anchors_in_grid_units_and_bias_prior(seed_cfg):
    model = DetectionModel(seed_cfg)
    det = model.detect
    pixels = torch.tensor(seed_cfg["anchors"], dtype=torch.float32).view(3, 3, 2)
    torch.testing.assert_close(det.anchors * det.stride.view(-1, 1, 1), pixels)
    for conv, stride in zip(det.m, det.stride.tolist()):
        bound = conv.in_channels**-0.5  # PyTorch's default bias init is U(-bound, bound)
        b = conv.bias.view(3, -1)
        assert (b[:, 4] - math.log(8 / (640 / stride) ** 2)).abs().max() <= bound
        assert (b[:, 5:] - math.log(0.6 / (80 - 0.99999))).abs().max() <= bound


def test_head_wiring_note(seed_cfg, caplog, monkeypatch):
    monkeypatch.setattr("clo_export.models.yolo._noted_wirings", set())  # as in a fresh process
    with caplog.at_level(logging.INFO, logger="clo_export"):
        DetectionModel(seed_cfg)
    notes = [r.message for r in caplog.records if "stock YOLOv5" in r.message]
    assert len(notes) == 1 and "layer 20 concatenates layer 14" in notes[0] and "layer 15" in notes[0]


def test_head_wiring_note_once_per_config(seed_cfg, caplog, monkeypatch):
    """The demo builds the seed model several times (train, export, check): one note, not one per build."""
    monkeypatch.setattr("clo_export.models.yolo._noted_wirings", set())
    with caplog.at_level(logging.INFO, logger="clo_export"):
        DetectionModel(seed_cfg)
        DetectionModel(copy.deepcopy(seed_cfg))
        DetectionModel(seed_cfg, nc=3)
    notes = [r.message for r in caplog.records if "stock YOLOv5" in r.message]
    assert len(notes) == 1 and "layer 20 concatenates layer 14" in notes[0]
    other = copy.deepcopy(seed_cfg)
    other["head"][9] = [[-1, 13], 1, "Concat", [1]]  # layer 20 now takes layer 13: another wiring, noted too
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clo_export"):
        DetectionModel(other)
    notes = [r.message for r in caplog.records if "stock YOLOv5" in r.message]
    assert notes == [n for n in notes if "layer 20 concatenates layer 13" in n] and len(notes) == 1


def test_eval_output_is_decoded_and_training_output_is_raw(small_model):
    x = torch.rand(2, 3, 256, 384)
    with torch.no_grad():
        y = small_model(x)
        assert y.shape == (2, 3 * (32 * 48 + 16 * 24 + 8 * 12), 8)
        small_model.train()
        raw = small_model(x)
    small_model.eval()
    assert [tuple(r.shape) for r in raw] == [(2, 3, 32, 48, 8), (2, 3, 16, 24, 8), (2, 3, 8, 12, 8)]
    assert 0 <= y[..., 4:].min() and y[..., 4:].max() <= 1


@pytest.mark.parametrize(
    "args,kw",
    [
        ([], dict(num_heads=8, group_split=[4, 4], kernel_sizes=[5], window_size=4)),
        ([4, [2, 2], [3], 2], dict(num_heads=4, group_split=[2, 2], kernel_sizes=[3], window_size=2)),
        (
            [{"num_heads": 16, "group_split": [4, 12], "kernel_sizes": [9], "window_size": 1}],
            dict(num_heads=16, group_split=[4, 12], kernel_sizes=[9], window_size=1),
        ),
        ([8, [2, 2, 4], [3, 5], 2], dict(num_heads=8, group_split=[2, 2, 4], kernel_sizes=[3, 5], window_size=2)),
    ],
)
def test_efficient_attention_matches_the_seed(args, kw, seed_cfg):
    cfg = copy.deepcopy(seed_cfg)
    cfg["backbone"][9] = [-1, 1, "EfficientAttention", args]
    model = DetectionModel(cfg).eval()
    ours = model.model[9]
    ref = seed_reference.EfficientAttention(ours.dim, **kw).eval()
    torch.manual_seed(1)
    for p in ours.parameters():
        p.data.normal_(0, 0.2)
    ref.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, ours.dim, 16, 24)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))


@pytest.mark.parametrize(
    "args,message",
    [
        ([8, [4, 3], [5], 4], "group_split [4, 3] sums to 7 but num_heads is 8"),
        ([12, [6, 6], [5], 4], "dim 256 is not divisible by num_heads 12"),
        ([8, [4, 4], [5, 3], 4], "2 kernel_sizes need 3 group_split entries"),
        ([{"heads": 8}], "unknown arguments ['heads']"),
    ],
)
def test_invalid_attention_args_name_the_layer(args, message, seed_cfg):
    cfg = copy.deepcopy(seed_cfg)
    cfg["backbone"][9] = [-1, 1, "EfficientAttention", args]
    with pytest.raises(CloExportError) as e:
        DetectionModel(cfg)
    assert "layer 9 EfficientAttention" in str(e.value) and message in str(e.value)


def test_unknown_module_lists_known_ones(seed_cfg):
    cfg = copy.deepcopy(seed_cfg)
    cfg["backbone"][9] = [-1, 1, "CBAM", []]
    with pytest.raises(
        CloExportError, match=r"layer 9: unknown module 'CBAM'; known: .*C3.*EfficientAttention.*--plugin"
    ):
        DetectionModel(cfg)


def test_yaml_strings_are_never_evaluated(seed_cfg):
    cfg = copy.deepcopy(seed_cfg)
    cfg["backbone"][0] = [-1, 1, "__import__('os').system('true')", []]
    with pytest.raises(CloExportError, match="unknown module"):
        DetectionModel(cfg)


def test_window_that_does_not_divide_the_map_is_a_clear_error(small_model):
    with pytest.raises(CloExportError) as e:
        small_model.check_imgsz((480, 640))
    msg = str(e.value)
    assert "layer 9 EfficientAttention" in msg and "15x20 feature map" in msg and "window_size 4" in msg
    assert "multiples of 128" in msg and "512,640" in msg
    with pytest.raises(CloExportError, match="15x20 feature map"), torch.no_grad():
        small_model(torch.zeros(1, 3, 480, 640))
    small_model.check_imgsz((512, 640))
    with pytest.raises(CloExportError, match="not a multiple of the model stride 32; use --imgsz 512,640"):
        small_model.check_imgsz((500, 640))
    assert small_model.size_multiple() == 128


def test_fuse_keeps_outputs(small_model):
    before = {k: v.clone() for k, v in small_model.state_dict().items()}
    fused = small_model.fuse()
    assert fused is not small_model
    assert not any(hasattr(m, "bn") for m in fused.modules())
    # the model fuse() was called on is unchanged: BatchNorms in place, same tensors, same values
    assert sum(isinstance(m, nn.BatchNorm2d) for m in small_model.modules()) == 57
    assert small_model.state_dict().keys() == before.keys()
    assert all(torch.equal(v, before[k]) for k, v in small_model.state_dict().items())
    assert sum(p.numel() for p in fused.parameters()) < sum(p.numel() for p in small_model.parameters())
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        torch.testing.assert_close(fused(x), small_model(x), rtol=1e-4, atol=1e-3)


def test_every_registered_block_builds_and_runs(plugins_loaded):
    """Each block through its own parse rule, from a 16-channel input."""
    from clo_export.registry import LayerContext

    samples = {
        "Conv": [32, 3, 2],
        "Bottleneck": [16],
        "C3": [32],
        "SPPF": [32, 5],
        "Concat": [1],
        "nn.Upsample": [None, 2, "nearest"],
        "Upsample": [None, 2, "nearest"],
        "EfficientAttention": [],
        "MemoryEfficientSwish": [],
        "Detect": [2, [[10, 13, 16, 30]]],
    }
    for name, block in REGISTRY.blocks.items():
        if block.source != "builtin":
            continue
        f = [-1, -1] if name == "Concat" else -1
        spec = block.parse(LayerContext(0, f, 1, list(samples[name]), {}, [16], 1.0, 2))
        m = block.cls(*spec.args, **spec.kwargs).eval()
        x = torch.rand(1, 16, 16, 16)
        if name == "Detect":
            m.stride = torch.tensor([8.0])
            out = m([x])
            assert out.shape == (1, 2 * 16 * 16, 7)
            continue
        out = m([x, x]) if name == "Concat" else m(x)
        assert out.shape[1] == spec.c2, name


def test_summary_counts_flops(small_model):
    from clo_export.models.summary import summarize

    s = summarize(small_model, (256, 256))
    assert s.n_layers == 26 and s.params == sum(p.numel() for p in small_model.parameters())
    assert 0.5 < s.gflops < 1.5  # 4.7 GFLOPs at 640 scales by (256/640)^2 ≈ 0.75
    assert s.strides == [8, 16, 32]


def test_anchor_order_is_checked_against_strides(seed_cfg):
    cfg = copy.deepcopy(seed_cfg)
    cfg["anchors"] = cfg["anchors"][::-1]  # largest anchors listed first: YOLOv5 flips them
    det = DetectionModel(cfg).detect
    areas = (det.anchors * det.stride.view(-1, 1, 1)).prod(-1).mean(-1)
    assert areas[0] < areas[1] < areas[2]
    torch.testing.assert_close(det.anchors[0] * 8, torch.tensor([[10.0, 13], [16, 30], [33, 23]]))
