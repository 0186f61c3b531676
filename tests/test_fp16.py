"""FP16 conversion: weights/activations in half, Softmax kept in float32 by explicit casts, outputs close."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto

from clo_export.export.fp16 import to_fp16

RTOL = 2e-2  # FP16 vs FP32, relative to the output's largest magnitude


class ConvAttention(torch.nn.Module):
    """Conv, scaled q @ k^T, softmax, @ v and a nearest upsample (Resize with float32 scales)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.up = torch.nn.Upsample(None, 2, "nearest")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = torch.nn.functional.silu(self.conv(x)).flatten(2).transpose(1, 2)  # (1, 64, 16)
        attn = ((q * 0.25) @ q.transpose(1, 2)).softmax(-1)
        y = (attn @ q).transpose(1, 2).reshape(1, 16, 8, 8)
        return self.up(y + (x > 0).float().mean())  # a Cast(to=FLOAT) that must become FLOAT16


@pytest.fixture(scope="module")
def exported() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    torch.manual_seed(0)
    module = ConvAttention().eval()
    x = torch.randn(1, 3, 8, 8)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module, x, f, opset_version=17, dynamo=False, input_names=["images"], output_names=["output0"]
        )
    model = onnx.load_from_string(f.getvalue())
    sess = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    return model, x.numpy(), sess.run(None, {"images": x.numpy()})[0]


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    return {v.name: v.type.tensor_type.elem_type for v in [*g.input, *g.output, *g.value_info]}


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x})[0]


@pytest.mark.parametrize("keep_io_fp32", [False, True])
def test_fp16_close_to_fp32_with_softmax_in_fp32(exported, keep_io_fp32):
    model, x, ref = exported
    half = to_fp16(model, keep_io_fp32=keep_io_fp32)
    onnx.checker.check_model(half, full_check=True)
    types = _types(half)

    io_type = TensorProto.FLOAT if keep_io_fp32 else TensorProto.FLOAT16
    assert half.graph.input[0].type.tensor_type.elem_type == io_type
    assert half.graph.output[0].type.tensor_type.elem_type == io_type
    softmax = next(n for n in half.graph.node if n.op_type == "Softmax")
    assert types[softmax.input[0]] == types[softmax.output[0]] == TensorProto.FLOAT
    matmuls = [n for n in half.graph.node if n.op_type == "MatMul"]
    assert all(types[n.output[0]] == TensorProto.FLOAT16 for n in matmuls)
    conv = next(n for n in half.graph.node if n.op_type == "Conv")
    weights = {t.name: t.data_type for t in half.graph.initializer}
    assert weights[conv.input[1]] == TensorProto.FLOAT16

    out = _run(half, x if keep_io_fp32 else x.astype(np.float16))
    assert out.dtype == (np.float32 if keep_io_fp32 else np.float16)
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_no_float32_left_outside_kept_ops(exported):
    model, _, _ = exported
    half = to_fp16(model)
    types = _types(half)
    fp32 = {name for name, t in types.items() if t == TensorProto.FLOAT}
    resize = next(n for n in half.graph.node if n.op_type == "Resize")
    allowed = {name for n in half.graph.node if n.op_type == "Softmax" for name in [*n.input, *n.output]}
    allowed |= set(resize.input[1:])  # Resize roi/scales are float32 by the spec
    assert fp32 <= allowed
    assert any(
        n.op_type == "Cast" and n.attribute[0].i == TensorProto.FLOAT16 and "Softmax" not in n.name
        for n in half.graph.node
    )
    for node in half.graph.node:
        if node.op_type == "Cast" and not node.name.startswith(
            tuple(n.name for n in half.graph.node if n.op_type == "Softmax")
        ):
            assert next(a.i for a in node.attribute if a.name == "to") != TensorProto.FLOAT


def test_chained_kept_ops_share_fp32_tensor(exported):
    model, x, ref = exported
    half = to_fp16(model, keep_fp32_ops=("Softmax", "MatMul"))
    softmax = next(n for n in half.graph.node if n.op_type == "Softmax")
    producer = next(n for n in half.graph.node if softmax.input[0] in n.output)
    assert producer.op_type == "MatMul"  # fed in float32 directly, no Cast round trip
    assert not any(n.op_type == "Cast" and n.input[0] == softmax.input[0] for n in half.graph.node)
    onnx.checker.check_model(half, full_check=True)
    out = _run(half, x.astype(np.float16))
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=0, atol=RTOL * np.abs(ref).max())


def test_value_info_is_converted(exported):
    """A model carrying value_info (as after shape inference or onnxsim) converts consistently."""
    model, x, ref = exported
    half = to_fp16(onnx.shape_inference.infer_shapes(model))
    assert half.graph.value_info
    onnx.checker.check_model(half, full_check=True)
    assert _types(half)  # strict inference agrees with the stored types
    out = _run(half, x.astype(np.float16))
    np.testing.assert_allclose(out.astype(np.float32), ref, rtol=0, atol=RTOL * np.abs(ref).max())
