"""Q/DQ quantization of an exported seed-architecture model: graph rules, attention kept float, ORT runs it,
metadata and sidecar, cache hit and stale cache, accuracy report."""

from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest

from clo_export.artifacts import read_metadata
from clo_export.errors import CloExportError
from clo_export.quantization.graph import attention_nodes, find_targets
from clo_export.quantization.quantize import CALIBRATION_KEY, QuantizeOptions, quantize
from clo_export.quantization.rules import check_qdq
from tests.helpers import small_onnx

IMGSZ = (256, 256)  # at 128 the P5 map is one attention window: onnxsim folds the softmax away
OPTS = QuantizeOptions(
    method="minmax", num=16, holdout=4, target_drop=None, min_agreement=0, min_holdout=4
)  # automatic precision: tests/test_calib_auto.py; the gate: tests/test_quantize_gate.py


@pytest.fixture()
def model_dir(tmp_path) -> Path:
    """A fresh folder holding a copy of the small FP32 ONNX and calibration images."""
    src = small_onnx()
    shutil.copy(src, tmp_path / "small.onnx")
    shutil.copytree(src.parent / "calib", tmp_path / "calib")
    return tmp_path


def test_attention_map_path_is_found_by_topology():
    model = onnx.load(small_onnx())
    found = attention_nodes(model)
    ops = sorted(n.op_type for n in model.graph.node if n.name in found)
    assert ops == ["Conv", "Conv", "MatMul", "MatMul", "Mul", "Mul", "Sigmoid", "Softmax", "Tanh"]
    assert all("/model.9/" in name for name in found)  # the EfficientAttention layer of the seed YAML
    qk = next(n for n in model.graph.node if n.name in found and n.op_type == "Mul" and "act_block" not in n.name)
    assert qk.name == "/model.9/Mul"  # q * k
    keep = find_targets(model, keep_attention_fp=True)
    full = find_targets(model, keep_attention_fp=False)
    assert {t.op_type for t in full} == {"Conv", "MatMul", "Add"} and "MatMul" not in {t.op_type for t in keep}
    adds = {t.node for t in full if t.op_type == "Add"}
    assert adds and all("/m/m." in a for a in adds)  # Bottleneck shortcuts only, never Detect's grid Adds


def test_quantize_writes_a_checked_qdq_model_that_onnxruntime_runs(model_dir):
    from clo_export.backends.onnxrt import OnnxRuntimeRunner

    seen = []
    r = quantize(model_dir / "small.onnx", model_dir / "calib", opts=OPTS, progress=lambda d, t: seen.append((d, t)))
    assert r.path == model_dir / "small.int8.onnx" and r.cache.status == "missing"
    assert seen[-1] == (16, 16) and len(seen) == 16
    q = onnx.load(r.path)
    assert check_qdq(q) == []
    assert next(o.version for o in q.opset_import if o.domain == "") == 17
    attn = attention_nodes(onnx.load(model_dir / "small.onnx"))
    producers = {o: n for n in q.graph.node for o in n.output}
    for node in q.graph.node:
        if node.name in attn:
            assert all(producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for i in node.input)
    meta = read_metadata(q)
    assert meta.precision == "int8" and meta.imgsz == IMGSZ and meta.names[2] == "star"
    calib = json.loads({p.key: p.value for p in q.metadata_props}[CALIBRATION_KEY])
    assert calib["method"] == "minmax" and calib["images"] == 16 and calib["keep_attention_fp"] is True
    side = json.loads(r.sidecar.read_text())
    assert (
        side["precision"] == "int8"
        and side["calibration"]["images"] == 16
        and side["accuracy"]["file"] == r.accuracy_path.name
    )
    x = np.random.default_rng(0).random((1, 3, *IMGSZ), dtype=np.float32)
    with OnnxRuntimeRunner(r.path, providers=["CPUExecutionProvider"]) as runner:
        out = runner.infer({"images": x})["output0"]
    assert out.shape[0] == 1 and out.shape[2] == 8 and np.isfinite(out).all()
    assert not list(model_dir.glob(".*.part"))  # atomic writes leave no temporaries


def test_accuracy_report_on_held_out_images(model_dir):
    r = quantize(model_dir / "small.onnx", model_dir / "calib", opts=OPTS)
    rep = r.report
    assert rep.n_images == 4 and not set(r.split.calib) & set(r.split.holdout)
    assert set(rep.tensors) >= {"output0", "output0.boxes", "output0.objectness", "output0.classes"}
    assert rep.tensors["output0.objectness"].cosine > 0.9
    assert rep.agreement.n_ref > 10  # the biased head really detects, so agreement is measured, not vacuous
    assert 0.5 < rep.agreement.f1 <= 1.0 and 0.3 < rep.map50 <= 1.0
    assert 0.5 < rep.fp32.map50_95 <= 1 and rep.score == pytest.approx(rep.int8.map50_95 / rep.fp32.map50_95)
    assert rep.int8.drop50_95 == pytest.approx(100 * (rep.fp32.map50_95 - rep.int8.map50_95))
    assert (
        rep.box_iou.n == rep.agreement.n_matched and 0.5 <= rep.box_iou.min <= rep.box_iou.p10 <= rep.box_iou.mean <= 1
    )
    saved = json.loads(r.accuracy_path.read_text())
    assert (
        saved["agreement_map50_95"] == pytest.approx(rep.score)
        and saved["detections_at_deploy"]["n_ref"] == rep.agreement.n_ref
    )
    assert saved["drop_map50_95_points"] == pytest.approx(rep.int8.drop50_95) and saved["box_iou"]["n"] == rep.box_iou.n
    assert 0 < rep.int8.box_error < 100 and saved["int8_vs_fp32"]["box_error"] == pytest.approx(rep.int8.box_error)
    assert saved["float_nodes"] == sorted(attention_nodes(onnx.load(model_dir / "small.onnx")))


def test_box_error_is_one_minus_iou_of_the_same_anchors(model_dir):
    """FP32 against itself: 0; every box moved right by d pixels: the mean of 1 - (w - d) / (w + d) over FP32's
    confident anchors (objectness x best class >= conf)."""
    from clo_export.quantization.accuracy import HeldOut
    from clo_export.quantization.calibset import CalibrationData, split_sources

    held = HeldOut(
        str(model_dir / "small.onnx"), CalibrationData(split_sources(model_dir / "calib", 16, 4, 0).holdout, IMGSZ)
    )
    assert held.box_error(held.ref) == 0.0 and held.score(str(model_dir / "small.onnx")).box_error == 0.0
    d = 2.0
    moved = [{k: v.copy() for k, v in out.items()} for out in held.ref]
    for out in moved:
        out["output0"][..., 0] += d
    rows = np.concatenate([out["output0"].reshape(-1, out["output0"].shape[-1]) for out in held.ref])
    w = rows[rows[:, 4] * rows[:, 5:].max(1) >= held.conf, 2]
    assert len(w) > 10 and (w > d).all()
    assert held.box_error(moved) == pytest.approx(100 * np.mean(1 - (w - d) / (w + d)), rel=1e-4)


def test_cache_hit_skips_calibration_and_stale_cache_is_ignored(model_dir, caplog, monkeypatch):
    import clo_export.quantization.quantize as qmod

    first = quantize(model_dir / "small.onnx", model_dir / "calib", opts=OPTS)
    assert first.cache_path.is_file()
    calls = []
    real = qmod.calibrate
    monkeypatch.setattr(qmod, "calibrate", lambda *a, **k: calls.append(1) or real(*a, **k))
    again = quantize(
        model_dir / "small.onnx",
        model_dir / "calib",
        opts=replace(OPTS, keep_attention_fp=False),
    )
    assert again.cache.status == "hit" and not calls  # one cache serves both attention modes
    assert again.n_qdq_tensors > first.n_qdq_tensors
    with caplog.at_level(logging.WARNING, logger="clo_export"):
        stale = quantize(model_dir / "small.onnx", model_dir / "calib", opts=replace(OPTS, method="percentile"))
    assert stale.cache.status == "stale" and calls == [1] and "differs in: method" in caplog.text


def test_bad_inputs_are_refused(model_dir):
    model = onnx.load(model_dir / "small.onnx")
    targets = find_targets(model)
    from clo_export.quantization.graph import activation_tensors
    from clo_export.quantization.qdq import insert_qdq

    onnx.save(insert_qdq(model, targets, {t: 1.0 for t in activation_tensors(targets)}), model_dir / "q.onnx")
    with pytest.raises(CloExportError, match="already holds Q/DQ"):
        quantize(model_dir / "q.onnx", model_dir / "calib", model_dir / "again.onnx", OPTS)
    with pytest.raises(CloExportError, match="--method"):
        quantize(model_dir / "small.onnx", model_dir / "calib", opts=QuantizeOptions(method="kl"))
    with pytest.raises(CloExportError, match="does not exist"):
        quantize(model_dir / "missing.onnx", model_dir / "calib", opts=OPTS)
    with pytest.raises(CloExportError, match="could be read"):
        (model_dir / "junk").mkdir()
        (model_dir / "junk" / "a.jpg").write_bytes(b"junk")
        quantize(model_dir / "small.onnx", model_dir / "junk", opts=OPTS)
