"""The pre-flight check (`clo-export trt --dry-run`): our own exports pass for every target, one planted
violation per rule is caught, and the dry run works without TensorRT."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clo_export.engine.build import PreflightError, dry_run
from clo_export.engine.plan import TARGETS, BuildRequest, make_plan, opset_limit, target_version
from clo_export.engine.preflight import check_onnx
from clo_export.engine.version import TrtVersion
from clo_export.errors import CloExportError
from tests.trt_exports import exports

CASES = {  # export -> requests it is meant for
    "fp32": [BuildRequest(), BuildRequest(precision="fp16"), BuildRequest(precision="int8", calibrator="entropy")],
    "fp16": [BuildRequest(precision="fp16")],
    "int8": [BuildRequest(precision="int8", is_qdq=True)],
    "nms": [BuildRequest(), BuildRequest(precision="fp16")],
    "dynamic": [BuildRequest(batch_range=(1, 4, 8)), BuildRequest(precision="fp16", batch_range=(1, 4, 8))],
}


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("kind", CASES)
def test_our_exports_pass_every_target(kind, target):
    path = getattr(exports(), kind)
    for request in CASES[kind]:
        if request.calibrator != "qdq" and target == "11.x":
            continue  # implicit calibrators are gone in 11 (make_plan refuses, tested in test_trt_plan)
        if kind == "nms" and request.precision == "fp16" and target in ("11.x",):
            continue  # the FP16 ONNX of an NMS model comes from clo-export onnx --half --nms (refused here)
        calib = ("calib/",) if request.precision == "int8" and request.calibrator != "qdq" else ()
        result = dry_run(path, request, target, calib=calib)
        assert result, [str(p) for p in result.problems]


def test_dla_dry_run_lists_gpu_layers_and_passes_with_fallback():
    result = dry_run(exports().fp32, BuildRequest(precision="fp16", dla_core=0), "8.5")
    assert result and any("MatMul" in name for name in result.gpu_layers)


# ---- one planted violation per rule --------------------------------------------------------


def _graph(nodes, inits=(), opset=17, inputs=None, outputs=None):
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)
    g = helper.make_graph(nodes, "planted", inputs or [x], outputs or [y], list(inits))
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])


def _problems(model, target="8.5", **kw):
    return check_onnx(model, make_plan(target_version(target), BuildRequest(**kw)))


def _rules(problems):
    return sorted({p.rule for p in problems})


def test_opset_above_the_limit():
    model = _graph([helper.make_node("Relu", ["images"], ["output0"], name="relu")], opset=18)
    assert _rules(_problems(model, "8.5")) == ["opset"] and "opset 18 is above 17" in str(_problems(model)[0])
    assert _problems(model, "10.3") == []
    assert opset_limit(TrtVersion(8, 6, 1)) == 17 and opset_limit(TrtVersion(10, 3)) == 20
    assert opset_limit(TrtVersion(11, 4, 1)) == 24


def test_unsupported_op():
    model = _graph([helper.make_node("Unique", ["images"], ["output0"], name="uniq")])
    assert _rules(_problems(model, "11.x")) == ["unsupported-op"]
    mod = _graph([helper.make_node("Mod", ["images", "images"], ["output0"], name="mod", fmod=1)])
    assert _rules(_problems(mod, "8.5")) == ["unsupported-op"] and _problems(mod, "10.3") == []
    custom = _graph([helper.make_node("Gelu", ["images"], ["output0"], name="g", domain="com.microsoft")])
    assert "plugin" in str(_problems(custom, "10.3")[0])


def _qdq_model(zero_point=0, axis=0, weight_scale_channels=4, activation_channels=1):
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.int8), "w_q")
    inits = [
        w,
        numpy_helper.from_array(
            np.full(weight_scale_channels, 0.1, np.float32) if weight_scale_channels > 1 else np.array(0.1, np.float32),
            "w_s",
        ),
        numpy_helper.from_array(
            np.zeros(weight_scale_channels, np.int8) if weight_scale_channels > 1 else np.array(0, np.int8), "w_z"
        ),
        numpy_helper.from_array(
            np.full(activation_channels, 0.02, np.float32) if activation_channels > 1 else np.array(0.02, np.float32),
            "x_s",
        ),
        numpy_helper.from_array(
            np.full(activation_channels, zero_point, np.int8)
            if activation_channels > 1
            else np.array(zero_point, np.int8),
            "x_z",
        ),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["images", "x_s", "x_z"], ["xq"], name="x_q", axis=1),
        helper.make_node("DequantizeLinear", ["xq", "x_s", "x_z"], ["xd"], name="x_dq", axis=1),
        helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["wd"], name="w_dq", axis=axis),
        helper.make_node("Conv", ["xd", "wd"], ["output0"], name="conv"),
    ]
    return _graph(nodes, inits, opset=17)


def test_qdq_zero_point_and_axis():
    assert _problems(_qdq_model(), precision="int8", is_qdq=True) == []
    zp = _problems(_qdq_model(zero_point=3), precision="int8", is_qdq=True)
    assert _rules(zp) == ["qdq"] and "zero point must be 0" in str(zp[0]) and len(zp) == 2  # Q and DQ
    axis = _problems(_qdq_model(axis=1), precision="int8", is_qdq=True)
    assert _rules(axis) == ["qdq"] and "output-channel axis 0" in str(axis[0])
    act = _problems(_qdq_model(activation_channels=3), precision="int8", is_qdq=True)
    assert _rules(act) == ["qdq"] and "per-channel scale on an activation" in str(act[0])


def test_nms_inputs_must_be_initializers():
    boxes = helper.make_tensor_value_info("boxes", TensorProto.FLOAT, [1, 10, 4])
    scores = helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 1, 10])
    out = helper.make_tensor_value_info("sel", TensorProto.INT64, None)
    inits = [
        numpy_helper.from_array(np.array([5], np.int64), "k"),
        numpy_helper.from_array(np.array([0.5], np.float32), "iou"),
    ]
    nms = helper.make_node("NonMaxSuppression", ["boxes", "scores", "k", "iou", "thr"], ["sel"], name="nms")
    thr = helper.make_node("Identity", ["scores_thr_src"], ["thr"], name="thr")
    src = helper.make_tensor_value_info("scores_thr_src", TensorProto.FLOAT, [1])
    model = _graph([thr, nms], inits, inputs=[boxes, scores, src], outputs=[out])
    problems = _problems(model, "10.3")
    assert _rules(problems) == ["nms"] and "score_threshold (thr) must be an initializer" in str(problems[0])


def test_dla_layers_without_gpu_fallback():
    model = _graph([helper.make_node("MatMul", ["images", "images"], ["output0"], name="attn/MatMul")])
    problems = _problems(model, "8.5", precision="fp16", dla_core=0, gpu_fallback=False)
    assert _rules(problems) == ["dla"] and "attn/MatMul" in str(problems[0])
    assert _problems(model, "8.5", precision="fp16", dla_core=0) == []  # falls back to the GPU
    assert _problems(model, "8.5", precision="fp16") == []  # no DLA asked


def test_fp16_on_11_must_come_from_an_fp16_onnx():
    model = onnx.load(str(exports().fp32))
    problems = _problems(model, "11.x", precision="fp16", is_fp16=True)  # says FP16, holds FP32 weights
    assert _rules(problems) == ["fp16-onnx"] and "clo-export onnx --half" in str(problems[0])
    assert _problems(onnx.load(str(exports().fp16)), "11.x", precision="fp16", is_fp16=True) == []
    assert _problems(model, "11.x", precision="fp16") == []  # the FP32 ONNX is converted on the way (a note)


# ---- dry run as a whole ---------------------------------------------------------------------


def test_dry_run_needs_no_tensorrt_and_names_targets(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    with pytest.raises(CloExportError, match="--target 8.5"):
        dry_run(exports().fp32, BuildRequest())
    with pytest.raises(CloExportError, match="unknown --target '12.x'"):
        dry_run(exports().fp32, BuildRequest(), "12.x")
    assert dry_run(exports().fp32, BuildRequest(), "10.7.0").plan.version == TrtVersion(10, 7, 0)


def test_keep_float_becomes_layer_precisions_in_the_dry_run(tmp_path):
    from clo_export.engine.onnx_facts import read_keep_float

    report = tmp_path / "m.int8.json"
    report.write_text(json.dumps({"float_nodes": ["/model.24/m.0/Conv", "/model.9/MatMul"]}))
    keep = read_keep_float(report)
    plan = dry_run(
        exports().fp32, BuildRequest(precision="int8", calibrator="entropy", keep_float=keep), "8.5", calib=("c/",)
    ).plan
    assert plan.layer_precisions == (("/model.24/m.0/Conv", "FLOAT"), ("/model.9/MatMul", "FLOAT"))
    report.write_text(json.dumps({"nodes": []}))
    with pytest.raises(CloExportError, match='no "float_nodes" list'):
        read_keep_float(report)


def test_preflight_error_is_one_line_with_every_problem_kept():
    model = _graph(
        [
            helper.make_node("Unique", ["images"], ["u"], name="u1"),
            helper.make_node("Unique", ["u"], ["output0"], name="u2"),
        ],
        opset=18,
    )
    problems = _problems(model, "8.5")
    e = PreflightError(TrtVersion(8, 5, 2), problems)
    assert len(e.problems) == 3 and "\n" not in str(e) and "(and 2 more)" in str(e) and "--dry-run" in str(e)
