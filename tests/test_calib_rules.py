"""TensorRT Q/DQ rule checker on models built here: ours pass, asymmetric / quantized-bias / misplaced fail."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from clo_export.errors import CloExportError
from clo_export.quantization.graph import activation_tensors, find_targets
from clo_export.quantization.qdq import insert_qdq, quantize_weight
from clo_export.quantization.rules import check_qdq, require_trt_qdq

RNG = np.random.default_rng(0)


def conv_model(opset: int = 17) -> onnx.ModelProto:
    """x -> Conv(w, b) -> Sigmoid -> y, float, the smallest detector-like graph."""
    w = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(RNG.standard_normal(4).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c"], ["y"], name="sig"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [w, b],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def ours(model: onnx.ModelProto | None = None) -> onnx.ModelProto:
    model = model or conv_model()
    targets = find_targets(model)
    return insert_qdq(model, targets, {t: 2.0 for t in activation_tensors(targets)})


def const(name: str, value) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value), name)


def test_our_qdq_passes_and_runs_in_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    model = conv_model()
    q = ours(model)
    assert check_qdq(q) == []
    onnx.checker.check_model(q, full_check=True)
    x = RNG.random((1, 3, 8, 8), dtype=np.float32)
    ref = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    got = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.abs(ref - got).max() < 0.05
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") == 1 and ops.count("DequantizeLinear") == 2  # input Q/DQ, weight DQ
    assert {t.name: t.data_type for t in q.graph.initializer}["b"] == TensorProto.FLOAT


def test_weight_quantization_is_symmetric_per_output_channel():
    w = RNG.standard_normal((5, 2, 3, 3)).astype(np.float32)
    w[2] = 0.0
    q, s = quantize_weight(w)
    assert q.dtype == np.int8 and s.shape == (5,) and np.all(s > 0)
    assert np.abs(q).max() <= 127 and np.all(np.abs(q.reshape(5, -1)).max(1)[[0, 1, 3, 4]] == 127)
    assert np.abs(q * s[:, None, None, None] - w).max() <= s.max() / 2 + 1e-7


def test_float_weights_behind_q_then_dq_pass():
    """TensorRT also takes FP32 weights -> Q -> DQ (it folds the Q); the checker must accept that form."""
    model = conv_model()
    w = numpy_helper.to_array(model.graph.initializer[0])
    scale = (np.abs(w.reshape(4, -1)).max(1) / 127).astype(np.float32)
    q = ours(model)
    q.graph.initializer.extend([model.graph.initializer[0], const("ws", scale), const("wz", np.zeros(4, np.int8))])
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    q.graph.node.insert(0, helper.make_node("QuantizeLinear", ["w", "ws", "wz"], ["wq"], name="wQ", axis=0))
    q.graph.node.insert(1, helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wdq"], name="wDQ", axis=0))
    conv.input[1] = "wdq"
    assert check_qdq(q) == []
    next(n for n in q.graph.node if n.name == "wDQ").attribute[0].i = 1
    assert any("axis 0" in p for p in check_qdq(q))


def _replace_init(model: onnx.ModelProto, name: str, value) -> onnx.ModelProto:
    for i, t in enumerate(model.graph.initializer):
        if t.name == name:
            model.graph.initializer[i].CopyFrom(const(name, value))
    return model


def _act_zp(model: onnx.ModelProto) -> str:
    return next(n.input[2] for n in model.graph.node if n.op_type == "QuantizeLinear")


def test_asymmetric_activations_fail():
    q = _replace_init(ours(), _act_zp(ours()), np.array(5, np.int8))
    assert any("not 0 (asymmetric)" in p for p in check_qdq(q))
    q = _replace_init(ours(), _act_zp(ours()), np.array(128, np.uint8))
    assert any("uint8" in p for p in check_qdq(q))
    with pytest.raises(CloExportError, match="breaks TensorRT's Q/DQ rules"):
        require_trt_qdq(q)


def test_quantized_bias_fails():
    q = ours()
    q.graph.initializer.extend(
        [
            const("b_q", np.array([3, -2, 7, 1], np.int32)),
            const("b_s", np.full(4, 0.01, np.float32)),
            const("b_zp", np.zeros(4, np.int32)),
        ]
    )
    dq = helper.make_node("DequantizeLinear", ["b_q", "b_s", "b_zp"], ["b_dq"], name="bias_DequantizeLinear", axis=0)
    q.graph.node.insert(0, dq)
    conv = next(n for n in q.graph.node if n.op_type == "Conv")
    conv.input[2] = "b_dq"
    problems = check_qdq(q)
    assert any("quantized bias" in p for p in problems) and any("INT32" in p for p in problems)


def test_per_tensor_weights_misplaced_qdq_and_old_opset_fail():
    q = ours()
    wdq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("w"))
    del wdq.attribute[:]  # axis defaults to 1
    assert any("axis 0" in p for p in check_qdq(q))
    q = ours()
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0].startswith("x"))
    next(n for n in q.graph.node if n.op_type == "Sigmoid").input[0] = dq.output[0]
    assert any("feeds Sigmoid" in p for p in check_qdq(q))
    assert any("opset 12" in p for p in check_qdq(ours(conv_model(12))))
    assert any("not an explicit INT8" in p for p in check_qdq(conv_model()))


def test_onnxruntime_default_quantize_static_fails_the_checker():
    """ONNX Runtime's defaults (UINT8 asymmetric activations, INT32 bias) are what TensorRT rejects."""
    q = pytest.importorskip("onnxruntime.quantization")

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": RNG.random((1, 3, 8, 8), dtype=np.float32)} for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d) / "f.onnx", Path(d) / "q.onnx"
        onnx.save(conv_model(), src)
        q.quantize_static(str(src), str(dst), Reader(), quant_format=q.QuantFormat.QDQ)
        problems = check_qdq(onnx.load(dst))
    assert any("asymmetric" in p or "uint8" in p for p in problems)
    assert any("bias" in p for p in problems)
