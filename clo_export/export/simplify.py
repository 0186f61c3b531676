"""Simplify an exported ONNX graph with onnxsim or onnxslim, never making it worse.

The simplifier is told the input shape is fixed: a fully static input is passed as an explicit
shape override; a symbolic batch dim (``--dynamic-batch``) is left alone, because overriding it
would pin the batch (onnxsim's ``overwrite_input_shapes`` writes the given ints; onnxslim's
``input_shapes`` turns -1 into an invalid dim_value of -1). Without an override both onnxsim 0.8
and onnxslim 0.1 keep a ``dim_param`` batch on inputs and outputs; H and W are fixed ints in the
graph already, so constant folding still sees them.

A result is only used when it passes onnx.checker and keeps the opset; otherwise the input model
is returned unchanged with the reason in `SimplifyResult.note`. Simplifier bookkeeping written into
``metadata_props`` (onnxsim 0.8 adds ``onnxsim.*`` keys) is dropped: the model keeps its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from types import ModuleType

import onnx

from clo_export.artifacts import graph_inputs, opset_of
from clo_export.errors import CloExportError
from clo_export.export.lint import lint
from clo_export.lazy import lazy_import

log = logging.getLogger(__name__)

SIMPLIFIERS = ("onnxsim", "onnxslim", "none")


@dataclass
class SimplifyResult:
    """What simplification asked for, what ran, and how the node count changed."""

    requested: str
    used: str
    nodes_before: int
    nodes_after: int
    note: str = ""


def _import(name: str) -> ModuleType:
    """Import a simplifier module (a seam the tests monkeypatch to simulate a missing one)."""
    return lazy_import(name)


def _static_input_shapes(model: onnx.ModelProto) -> dict[str, list[int]] | None:
    """Input shapes as ints when every dim of every input is fixed, else None (symbolic batch)."""
    shapes: dict[str, list[int]] = {}
    for inp in graph_inputs(model):
        dims = inp.type.tensor_type.shape.dim
        if not all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
            return None
        shapes[inp.name] = [d.dim_value for d in dims]
    return shapes


def _run_onnxsim(module: ModuleType, model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxsim with the static input shape (if any); check_n=0: the caller compares outputs."""
    kwargs: dict = {}
    shapes = _static_input_shapes(model)
    if shapes:
        kwargs["overwrite_input_shapes"] = shapes
    try:
        simplified, ok = module.simplify(model, certify=False, **kwargs)
    except TypeError as e:  # onnxsim < 0.8 has no `certify` keyword
        if "certify" not in str(e):
            raise
        simplified, ok = module.simplify(model, **kwargs)
    if not ok:
        raise RuntimeError("onnxsim reported that its own check failed")
    return simplified


def _run_onnxslim(module: ModuleType, model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxslim with the static input shape (if any) and no output check of its own."""
    kwargs: dict = {}
    shapes = _static_input_shapes(model)
    if shapes:
        kwargs["input_shapes"] = [f"{name}:{','.join(map(str, dims))}" for name, dims in shapes.items()]
    return module.slim(model, **kwargs)


def _validate(original: onnx.ModelProto, simplified: onnx.ModelProto) -> None:
    """Raise when the simplified model is not a valid drop-in for the original."""
    onnx.checker.check_model(simplified)
    if opset_of(simplified) != opset_of(original):
        raise RuntimeError(f"opset changed from {opset_of(original)} to {opset_of(simplified)}")
    before = [o.name for o in original.graph.output]
    after = [o.name for o in simplified.graph.output]
    if before != after:
        raise RuntimeError(f"outputs changed from {before} to {after}")
    added = lint(simplified) if not lint(original) else []
    if added:  # e.g. onnxsim turns a one-key Softmax into ConstantOfShape(Shape(x)) with a dynamic batch
        raise RuntimeError(f"it added run-time shape arithmetic: {added[0]}")


def simplify(model: onnx.ModelProto, simplifier: str = "onnxsim") -> tuple[onnx.ModelProto, SimplifyResult]:
    """Simplify `model`; fall back to onnxslim when onnxsim is missing; keep `model` on failure."""
    if simplifier not in SIMPLIFIERS:
        raise CloExportError(f"unknown simplifier '{simplifier}'; choose one of: {', '.join(SIMPLIFIERS)}")
    before = len(model.graph.node)
    result = SimplifyResult(requested=simplifier, used="none", nodes_before=before, nodes_after=before)
    if simplifier == "none":
        return model, result

    notes = []
    used = simplifier
    try:
        module = _import(simplifier)
    except CloExportError as e:
        if simplifier != "onnxsim":
            raise
        notes.append(f"onnxsim unavailable ({e.__cause__ or e}); used onnxslim instead")
        used = "onnxslim"
        module = _import("onnxslim")

    run = _run_onnxsim if used == "onnxsim" else _run_onnxslim
    try:
        candidate = run(module, model)
        _validate(model, candidate)
    except Exception as e:  # noqa: BLE001 - any simplifier failure means "keep the input"
        notes.append(f"{used} failed, model kept unsimplified: {type(e).__name__}: {' '.join(str(e).split())[:200]}")
        log.warning("%s", notes[-1])
        result.note = "; ".join(notes)
        return model, result

    del candidate.metadata_props[:]
    candidate.metadata_props.extend(model.metadata_props)
    result.used = used
    result.nodes_after = len(candidate.graph.node)
    result.note = "; ".join(notes)
    return candidate, result
