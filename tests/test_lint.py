"""Static-shape lint: shape arithmetic, computed reshapes and non-fixed inputs are found and named."""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from clo_export.errors import CloExportError
from clo_export.export.lint import check_static, full_check, lint


def _export(module: torch.nn.Module, x: torch.Tensor, dynamic_axes: dict[int, str] | None = None) -> onnx.ModelProto:
    """TorchScript-export a tiny module at opset 17 with input `images` and output `output0`."""
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module.eval(),
            x,
            f,
            opset_version=17,
            dynamo=False,
            input_names=["images"],
            output_names=["output0"],
            dynamic_axes={"images": dynamic_axes, "output0": dynamic_axes} if dynamic_axes else None,
        )
    return onnx.load_from_string(f.getvalue())


class ShapeReshape(torch.nn.Module):
    """Reshapes with sizes read from x.shape, as CloFormer's attention does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        b, c, h, w = y.shape
        return y.reshape(b, c, h * w).softmax(-1).reshape(b, c, h, w)


class ConvOnly(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.conv(x))


def test_shape_derived_reshape_is_rejected_with_node_name():
    model = _export(ShapeReshape(), torch.randn(1, 3, 16, 16), dynamic_axes={2: "height", 3: "width"})
    problems = lint(model)
    shape_nodes = [n.name for n in model.graph.node if n.op_type == "Shape"]
    assert shape_nodes and any(f"Shape node '{shape_nodes[0]}'" in p for p in problems)
    assert any(p.startswith("Reshape node") for p in problems)
    assert any("input 'images' dim 2 is 'height'" in p for p in problems)
    with pytest.raises(CloExportError, match="re-export with clo-export onnx") as err:
        check_static(model)
    assert "\n" not in str(err.value) and "more)" in str(err.value)


def test_clean_static_conv_graph_passes():
    model = _export(ConvOnly(), torch.randn(1, 3, 16, 16))
    assert lint(model) == []
    check_static(model)
    full_check(model)


def test_dynamic_batch_only_passes():
    model = _export(ConvOnly(), torch.randn(2, 3, 16, 16), dynamic_axes={0: "batch"})
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    assert lint(model) == []


def test_static_export_of_shape_reshape_passes():
    """The same module traced at a fixed size has constant reshape sizes."""
    model = _export(ShapeReshape(), torch.randn(1, 3, 16, 16))
    assert lint(model) == []


def _graph(nodes, inputs, inits=()):
    out = helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)
    return helper.make_model(
        helper.make_graph(nodes, "g", inputs, [out], list(inits)), opset_imports=[helper.make_opsetid("", 17)]
    )


def test_reshape_from_computed_tensor_and_taint_propagation():
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    nodes = [
        helper.make_node("Identity", ["shape"], ["s2"], name="copy"),
        helper.make_node("Reshape", ["images", "s2"], ["output0"], name="computed_reshape"),
    ]
    problems = lint(_graph(nodes, [x, shape]))
    assert problems == ["Reshape node 'computed_reshape' takes its shape from computed tensor 's2', not a constant"]

    const_shape = numpy_helper.from_array(np.array([1, -1], np.int64), "const_shape")
    nodes = [
        helper.make_node("Size", ["images"], ["n"]),
        helper.make_node("Cast", ["n"], ["nf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["images", "nf"], ["scaled"], name="scale"),
        helper.make_node("Reshape", ["scaled", "const_shape"], ["output0"], name="flat"),
    ]
    problems = lint(_graph(nodes, [x], [const_shape]))
    assert problems[0] == "Size node #0 (unnamed) reads a tensor shape at run time"
    assert any(p.startswith("Cast node #1") for p in problems)
    assert any(p.startswith("Mul node 'scale'") for p in problems)
    assert any(p.startswith("Reshape node 'flat' computes with a run-time shape") for p in problems)


def test_full_check_failure_is_one_line_error():
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 4, 4])
    model = _graph([helper.make_node("Add", ["images", "missing"], ["output0"], name="bad")], [x])
    with pytest.raises(CloExportError, match="fails onnx.checker") as err:
        full_check(model)
    assert "\n" not in str(err.value)
