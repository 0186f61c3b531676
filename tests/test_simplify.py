"""Simplification: constants fold, a symbolic batch survives, onnxslim stands in, failures keep the model."""

from __future__ import annotations

import types

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import clo_export.export.simplify as simplify_mod
from clo_export.errors import CloExportError
from clo_export.export.lint import lint
from clo_export.export.simplify import simplify


def _foldable(batch: int | str = 1) -> onnx.ModelProto:
    """images * (a + b), flattened through a Shape/Gather/Concat/Reshape chain (foldable when static)."""
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, 4, 4])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 48])
    inits = [
        numpy_helper.from_array(np.full((1, 3, 1, 1), 1.5, np.float32), "a"),
        numpy_helper.from_array(np.full((1, 3, 1, 1), 2.0, np.float32), "b"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
        numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
    ]
    nodes = [
        helper.make_node("Add", ["a", "b"], ["c"], name="fold_add"),
        helper.make_node("Mul", ["images", "c"], ["scaled"], name="mul"),
        helper.make_node("Shape", ["scaled"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], name="gather", axis=0),
        helper.make_node("Concat", ["batch", "minus_one"], ["target"], name="concat", axis=0),
        helper.make_node("Reshape", ["scaled", "target"], ["output0"], name="reshape"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x], [y], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    model.metadata_props.add(key="stride", value="32")
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"images": x})[0]


@pytest.mark.parametrize("simplifier", ["onnxsim", "onnxslim"])
def test_static_graph_folds_and_passes_lint(simplifier):
    model = _foldable()
    assert lint(model)  # Shape chain before simplification
    out, result = simplify(model, simplifier)
    assert (result.requested, result.used, result.note) == (simplifier, simplifier, "")
    assert result.nodes_after < result.nodes_before == len(model.graph.node)
    assert result.nodes_after == len(out.graph.node)
    assert lint(out) == []
    assert [(p.key, p.value) for p in out.metadata_props] == [("stride", "32")]  # no onnxsim.* bookkeeping
    assert out.opset_import[0].version == 17
    x = np.random.default_rng(0).random((1, 3, 4, 4), dtype=np.float32)
    np.testing.assert_allclose(_run(out, x), _run(model, x), rtol=1e-6)


@pytest.mark.parametrize("simplifier", ["onnxsim", "onnxslim"])
def test_symbolic_batch_survives(simplifier):
    out, result = simplify(_foldable("batch"), simplifier)
    assert result.used == simplifier
    for value in (out.graph.input[0], out.graph.output[0]):
        assert value.type.tensor_type.shape.dim[0].dim_param == "batch"
    assert out.graph.input[0].type.tensor_type.shape.dim[2].dim_value == 4
    x = np.random.default_rng(0).random((3, 3, 4, 4), dtype=np.float32)
    assert _run(out, x).shape == (3, 48)


def test_falls_back_to_onnxslim_when_onnxsim_missing(monkeypatch):
    real_import = simplify_mod._import

    def no_onnxsim(name):
        if name == "onnxsim":
            raise CloExportError("onnxsim is needed for this step but cannot be imported") from ImportError(
                "No module named 'onnxsim'"
            )
        return real_import(name)

    monkeypatch.setattr(simplify_mod, "_import", no_onnxsim)
    out, result = simplify(_foldable(), "onnxsim")
    assert (result.requested, result.used) == ("onnxsim", "onnxslim")
    assert "onnxsim unavailable" in result.note and "onnxslim" in result.note
    assert result.nodes_after < result.nodes_before


def test_simplifier_exception_keeps_model(monkeypatch):
    def broken(model, **kwargs):
        raise RuntimeError("constant folding exploded")

    monkeypatch.setattr(simplify_mod, "_import", lambda name: types.SimpleNamespace(simplify=broken))
    model = _foldable()
    out, result = simplify(model, "onnxsim")
    assert out is model
    assert result.used == "none" and result.nodes_after == result.nodes_before
    assert "constant folding exploded" in result.note


def test_invalid_result_keeps_model(monkeypatch):
    def invalid(model, **kwargs):
        bad = onnx.ModelProto()
        bad.CopyFrom(model)
        bad.graph.node[0].input[0] = "does_not_exist"
        return bad

    monkeypatch.setattr(simplify_mod, "_import", lambda name: types.SimpleNamespace(slim=invalid))
    model = _foldable()
    out, result = simplify(model, "onnxslim")
    assert out is model and "failed" in result.note and "ValidationError" in result.note


def test_none_and_unknown():
    model = _foldable()
    out, result = simplify(model, "none")
    assert out is model and result.used == "none"
    with pytest.raises(CloExportError, match="unknown simplifier"):
        simplify(model, "polygraphy")
