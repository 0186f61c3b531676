"""Automatic precision on the small seed-architecture model: method chosen on the held-out split, sensitivity
per site with MAC shares, float fallback within the INT8 MAC floor, float_nodes in the report, and the
failure bar on a deliberately bad calibration set."""

from __future__ import annotations

import json
import shutil

import cv2
import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from clo_export.calib.graph import GraphIndex, attention_nodes
from clo_export.calib.macs import int8_conv_share, int8_nodes, node_macs
from clo_export.calib.quantize import QuantizeOptions, quantize
from clo_export.calib.ranges import METHODS
from clo_export.calib.rules import check_qdq
from clo_export.calib.sources import split_sources
from tests.test_calib_qdq import small_onnx
from tests.test_calib_sources import write_images
from tests.test_quantize_cli import make_app


def test_conv_macs_follow_the_shapes():
    model = onnx.load(small_onnx())
    idx = GraphIndex(model)
    macs = node_macs(model, idx)
    conv = next(n for n in model.graph.node if n.name == "/model.0/conv/Conv")
    w = idx.constant(conv.input[1]).shape
    y = idx.shapes[conv.output[0]]
    assert macs[conv.name] == np.prod(w) * y[2] * y[3]
    assert all(v > 0 for v in macs.values()) and len([n for n in model.graph.node if n.op_type == "Conv"]) <= len(macs)


@pytest.fixture(scope="module")
def auto_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    shutil.copy(small_onnx(), root / "small.onnx")
    shutil.copytree(small_onnx().parent / "calib", root / "calib")
    opts = QuantizeOptions(num=16, holdout=6, target_drop=0.0, sensitivity=True)
    return root, quantize(root / "small.onnx", root / "calib", opts=opts)


def test_method_is_chosen_on_the_held_out_split(auto_run):
    _, r = auto_run
    assert set(r.method_scores) == set(METHODS)
    assert r.method == min(r.method_scores, key=lambda m: r.method_scores[m].drop50_95)
    assert r.report.info["method_asked"] == "auto" and r.report.info["decided_on"].startswith("held-out")


def test_sensitivity_table_has_every_site_with_its_mac_share(auto_run):
    _, r = auto_run
    names = [s.site.name for s in r.sites]
    assert {"/model.25/m.0/Conv", "/model.25/m.1/Conv", "/model.25/m.2/Conv"} <= set(names)  # output convs: own sites
    assert "model.2" in names and any("Add" in s.site.ops for s in r.sites)  # a C3 with its residual Adds is one site
    shares = [s.mac_share for s in r.sites]
    assert all(0 <= v < 1 for v in shares) and 0.9 < sum(shares) <= 1.0  # the float attention convs make the rest
    assert all(s.float_alone is not None and s.int8_alone is not None for s in r.sites)
    saved = json.loads(r.sensitivity_path.read_text())
    assert [s["site"] for s in saved["sites"]] == names and saved["held_out_images"] == 6


def test_fallback_keeps_sites_float_within_the_mac_floor(auto_run):
    root, r = auto_run
    c = r.choice
    assert c is not None and not c.met  # target 0: cannot be met on random weights with 10 % float
    assert r.int8_share >= 0.9 and c.score.drop50_95 <= r.method_scores[r.method].drop50_95
    q = onnx.load(r.path)
    assert check_qdq(q) == [] and int8_conv_share(q) == pytest.approx(r.int8_share)
    assert c.int8_share == pytest.approx(r.int8_share)  # the floor counts the float attention convs too
    assert not set(c.float_nodes) & int8_nodes(q)
    saved = json.loads(r.accuracy_path.read_text())
    attn = attention_nodes(onnx.load(root / "small.onnx"))
    assert set(saved["float_nodes"]) == attn | set(c.float_nodes)  # the key clo-export trt --keep-float reads
    assert saved["fallback"]["float_sites"] == c.float_sites and saved["int8_conv_mac_share"] == pytest.approx(r.int8_share)
    if c.float_sites:
        assert r.report.int8.map50_95 == pytest.approx(c.score.map50_95)  # the report measures the model that was written


def test_bad_calibration_set_fails_the_default_bar(tmp_path):
    """Calibrated on near-black frames, checked on real ones: exits 1 unless --min-agreement accepts it."""
    shutil.copy(small_onnx(), tmp_path / "m.onnx")
    calib = tmp_path / "calib"
    calib.mkdir()
    write_images(tmp_path / "real", 16, nested=False, ext=".png")
    real = sorted((tmp_path / "real").glob("*.png"))
    for i in range(32):
        cv2.imwrite(str(calib / f"{i:02d}.png"), np.full((160, 160, 3), 3, np.uint8))
    held = split_sources(calib, 16, 16, 0).holdout  # the seeded split: these become real frames (16: validate's minimum)
    for item, src in zip(held, real):
        shutil.copy(src, item.path)
    args = ["quantize", str(tmp_path / "m.onnx"), "--calib", str(calib), "--num", "16", "--holdout", "16",
            "--method", "minmax", "--all-int8"]
    bad = CliRunner().invoke(make_app(), args)
    out = " ".join(bad.output.split())
    assert bad.exit_code == 1 and "below --min-agreement 0.95" in out and "Traceback" not in out, bad.output
    ok = CliRunner().invoke(make_app(), args + ["--min-agreement", "0"])
    assert ok.exit_code == 0 and (tmp_path / "m.int8.onnx").is_file()
