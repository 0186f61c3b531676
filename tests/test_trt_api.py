"""Every TensorRT name our code touches exists in the TensorRT releases whose plans reach it, and every
Polygraphy name and keyword we use exists in the installed Polygraphy (pyproject's floor).

The TensorRT name lists in tests/data/tensorrt_api/ were extracted from the TensorRT Python bindings
wheels by tools/trt_api_names.py (nothing is downloaded here). 8.6.1 stands in for 8.5 (no 8.5
bindings wheel is on PyPI) and 11.4.0 for 11.4.1 (the DLA release).

Static walk with `ast` over the modules that touch TensorRT (engine/build.py, backends/trt.py,
quantization/trt_calibrator.py): an attribute chain rooted at a name that holds a TensorRT object
(`trt`, `layer`, `network`, `config`) is a TensorRT name. Names inside a function
`_when_<field>[__suffix]` belong to that plan field, and every call of such a function must sit in
`if` statements that test `plan.<field>`; those tests are evaluated against each plan. Names
elsewhere are used by every plan. Besides what our code touches, a plan makes Polygraphy touch the
enum members it names (`network_flags`, `builder_flags`), the calibrator base class and the
layer-precision DataType members: those are checked per plan too. The list is flat (no enum
qualification): "INT8" exists in 11 as DataType.INT8, so names 11 removed are also checked by name
against every 11.x plan (REMOVED_IN_11).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import itertools
import re
from dataclasses import fields
from pathlib import Path

import pytest

import clo_export.backends.trt as runner_mod
import clo_export.engine.build as build_mod
import clo_export.quantization.trt_calibrator as calib_mod
from clo_export.engine.plan import TARGETS, BuildPlan, BuildRequest, make_plan
from clo_export.engine.version import TrtVersion
from clo_export.errors import CloExportError

LISTS = Path(__file__).parent / "data" / "tensorrt_api"
MODULES = [Path(m.__file__) for m in (build_mod, runner_mod, calib_mod)]
# plan version -> the API list that stands for it
VERSIONS = {
    "8.5.2": "8.6.1",
    "8.6.1": "8.6.1",
    "10.3.0": "10.3.0",
    "10.7.0": "10.3.0",
    "10.12.0": "10.12.0.36",
    "10.16.0": "10.12.0.36",
    "11.4.0": "11.4.0.106",
    "11.4.1": "11.4.0.106",
}
TRT_ROOTS = {"trt", "layer", "network", "config"}
REMOVED_IN_11 = {
    "IInt8EntropyCalibrator2",
    "IInt8MinMaxCalibrator",
    "EXPLICIT_BATCH",
    "FP16",
    "INT8",
    "OBEY_PRECISION_CONSTRAINTS",
    "PREFER_PRECISION_CONSTRAINTS",
    "int8_calibrator",
    "precision",
    "set_output_type",
}
PLAN_FIELDS = {f.name for f in fields(BuildPlan)}
WHEN_RE = re.compile(r"^_when_(?P<field>[a-z0-9_]+?)(?:__\w+)?$")


def api_names(list_version: str) -> set[str]:
    lines = (LISTS / f"{list_version}.txt").read_text().splitlines()
    return {ln for ln in lines if ln and not ln.startswith("#")}


# ---- static walk --------------------------------------------------------------------------


def _root(node: ast.AST) -> ast.AST:
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node


def trt_attrs(tree: ast.AST) -> set[str]:
    """Attribute names used on TensorRT objects inside `tree`."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root = _root(node)
            if isinstance(root, ast.Name) and root.id in TRT_ROOTS:
                if not node.attr.startswith("__") or node.attr == "__version__":
                    out.add(node.attr)
    return out


def _mentions_plan_field(test: ast.AST, field: str) -> bool:
    return any(
        isinstance(n, ast.Attribute) and n.attr == field and isinstance(n.value, ast.Name) and n.value.id == "plan"
        for n in ast.walk(test)
    )


class Walk:
    """What our modules use: unconditional names and names per gated function."""

    def __init__(self, sources: list[str]) -> None:
        self.always: set[str] = set()
        self.gated: dict[str, set[str]] = {}
        self.gates: dict[str, list[ast.expr]] = {}  # gated function -> enclosing if tests
        for source in sources:
            tree = ast.parse(source)
            for fn in (n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))):
                m = WHEN_RE.match(fn.name)
                if m:
                    assert m["field"] in PLAN_FIELDS, f"{fn.name} is not named after a BuildPlan field"
                    self.gated[fn.name] = trt_attrs(fn)
                else:
                    self.always |= trt_attrs(fn)
                    self._find_calls(fn.body, [])
        assert set(self.gated) == set(self.gates), f"uncalled gated functions: {set(self.gated) - set(self.gates)}"

    def _find_calls(self, body: list[ast.stmt], tests: list[ast.expr]) -> None:
        for stmt in body:
            if isinstance(stmt, ast.If):
                self._find_calls(stmt.body, [*tests, stmt.test])
                assert not any(self._when_names(s) for s in stmt.orelse), "gated call in an else branch"
                continue
            for name in self._when_names(stmt):
                field = WHEN_RE.match(name)["field"]
                assert any(_mentions_plan_field(t, field) for t in tests), f"{name} called outside `if plan.{field}`"
                assert name not in self.gates, f"{name} called twice"
                self.gates[name] = tests

    @staticmethod
    def _when_names(stmt: ast.AST) -> list[str]:
        return [n.id for n in ast.walk(stmt) if isinstance(n, ast.Name) and WHEN_RE.match(n.id)]

    def used_by(self, plan: BuildPlan) -> set[str]:
        """TensorRT names that building with `plan` touches (ours, and what the plan makes Polygraphy touch)."""
        used = set(self.always)
        for fn, tests in self.gates.items():
            if all(eval(compile(ast.Expression(t), "<if>", "eval"), {"plan": plan}) for t in tests):
                used |= self.gated[fn]
        used |= {"NetworkDefinitionCreationFlag", *plan.network_flags, "BuilderFlag", *plan.builder_flags}
        used |= {dtype for _, dtype in plan.layer_precisions}
        if plan.calibrator_class:
            used |= {plan.calibrator_class, "int8_calibrator"}  # Polygraphy's CreateConfig sets it
        return used


WALK = Walk([p.read_text() for p in MODULES])


def all_plans(version: str) -> list[BuildPlan]:
    """Every distinct plan make_plan accepts for `version` over a grid of requests."""
    grid = itertools.product(
        ("fp32", "fp16", "int8"),
        ("qdq", "entropy", "minmax"),
        (False, True),
        (False, True),
        (None, (1, 1, 1), (1, 4, 8)),
        (None, 0, 1),
        (False, True),
        (False, True),
        (None, 4.0),
        (None, "tc.bin"),
        ((), ("/model.24/m.0/Conv",)),
        (False, True),
        (True, False),
    )
    plans = []
    for prec, cal, qdq, fp16, batch, dla, calib, strong, ws, tc, keep, keep16, fallback in grid:
        req = BuildRequest(
            precision=prec,
            calibrator=cal,
            is_qdq=qdq,
            is_fp16=fp16,
            dynamic_batch=batch is not None,
            batch_range=batch,
            dla_core=dla,
            has_calib=calib,
            strongly_typed=strong,
            workspace_gb=ws,
            timing_cache=tc,
            keep_float=keep,
            keep_float_fp16=keep16,
            gpu_fallback=fallback,
        )
        try:
            plans.append(make_plan(TrtVersion.parse(version), req))
        except CloExportError:
            pass
    return plans


PLANS = {v: all_plans(v) for v in VERSIONS}


def test_walker_sees_the_trt_facing_code():
    assert {"__version__"} <= WALK.always
    assert {
        "LayerType",
        "SOFTMAX",
        "precision",
        "set_output_type",
        "DataType",
        "FLOAT",
        "num_outputs",
        "type",
    } <= WALK.gated["_when_softmax_fp32_via_layer_precision"]
    assert WALK.gated["_when_workspace_bytes"] == {"MemoryPoolType", "WORKSPACE"}
    assert WALK.gated["_when_dla_core"] == {"DLA_core"}
    assert WALK.gated["_when_layer_precisions"] == {"DataType"}
    assert not REMOVED_IN_11 & WALK.always


def test_targets_are_covered():
    assert {str(v) for v in TARGETS.values()} <= set(VERSIONS)


@pytest.mark.parametrize("version", VERSIONS)
def test_every_used_name_exists(version):
    names = api_names(VERSIONS[version])
    assert PLANS[version], "no plan accepted"
    for plan in PLANS[version]:
        missing = WALK.used_by(plan) - names
        assert not missing, f"TensorRT {version} lacks {sorted(missing)} used for plan {plan}"


@pytest.mark.parametrize("version", [v for v in VERSIONS if v.startswith("11.")])
def test_removed_in_11_unreachable_on_11(version):
    for plan in PLANS[version]:
        assert not WALK.used_by(plan) & REMOVED_IN_11, plan


def test_removed_in_11_reached_below_11():
    used = set().union(*(WALK.used_by(p) for v in VERSIONS if not v.startswith("11.") for p in PLANS[v]))
    assert REMOVED_IN_11 <= used  # the gates are not vacuous
    assert any(p.layer_precisions for p in PLANS["8.5.2"]) and any(p.dla_core for p in PLANS["10.3.0"])


def test_lists_match_the_reference_table():
    v86, v103, v1012, v11 = (api_names(v) for v in ("8.6.1", "10.3.0", "10.12.0.36", "11.4.0.106"))
    for cls in (
        "IInt8EntropyCalibrator2",
        "IInt8MinMaxCalibrator",
        "int8_calibrator",
        "OBEY_PRECISION_CONSTRAINTS",
        "EXPLICIT_BATCH",
        "FP16",
        "set_output_type",
    ):
        assert cls in v86 and cls in v103 and cls in v1012 and cls not in v11, cls
    assert "STRONGLY_TYPED" not in v86 and "STRONGLY_TYPED" in v103 and "STRONGLY_TYPED" in v11
    for name in (
        "WORKSPACE",
        "build_serialized_network",
        "execute_async_v3",
        "set_tensor_address",
        "DLA_core",
        "GPU_FALLBACK",
        "set_output_allocator",
        "create_timing_cache",
    ):
        assert all(name in s for s in (v86, v103, v1012, v11)), name
    assert "execute_async_v2" in v86 and "execute_async_v2" not in v103


@pytest.mark.parametrize("path", sorted(LISTS.glob("*.txt")), ids=lambda p: p.name)
def test_lists_are_small_and_documented(path):
    assert path.stat().st_size < 300_000
    assert path.read_text().startswith("# made by: python tools/trt_api_names.py")


# ---- Polygraphy: names and keywords ---------------------------------------------------------


def polygraphy_calls(source: str) -> tuple[dict[str, object], list[tuple[object, ast.Call]]]:
    """Names imported from polygraphy (resolved) and every call of one of them (or of a method on its result)."""
    tree = ast.parse(source)
    imported: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("polygraphy"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                assert hasattr(module, alias.name), f"{node.module} has no {alias.name}"
                imported[alias.asname or alias.name] = getattr(module, alias.name)
    calls = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Name) and f.id in imported:
            calls.append((imported[f.id], node))
        elif (
            isinstance(f, ast.Attribute)
            and isinstance(f.value, ast.Call)
            and isinstance(f.value.func, ast.Name)
            and f.value.func.id in imported
        ):  # Profile().add(...)
            calls.append((getattr(imported[f.value.func.id], f.attr), node))
    return imported, calls


def accepted_keywords(target: object) -> set[str]:
    """Keyword names a Polygraphy callable accepts (a class's **kwargs are its bases' __init__ parameters)."""
    inits = (
        [c.__init__ for c in inspect.getmro(target) if "__init__" in vars(c)] if inspect.isclass(target) else [target]
    )
    names: set[str] = set()
    for fn in inits:
        params = inspect.signature(fn).parameters
        names |= {n for n, p in params.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
            break
    return names


@pytest.mark.parametrize("path", [*MODULES, Path(build_mod.__file__).with_name("gpu.py")], ids=lambda p: p.name)
def test_polygraphy_names_and_keywords_exist(path):
    imported, calls = polygraphy_calls(path.read_text())
    for target, call in calls:
        params = accepted_keywords(target)
        for kw in call.keywords:
            assert kw.arg in params, (
                f"{path.name}:{call.lineno}: {getattr(target, '__name__', target)} takes no {kw.arg}="
            )


def test_polygraphy_runner_methods_we_call():
    from polygraphy.backend.base import BaseRunner
    from polygraphy.backend.trt import TrtRunner

    assert "use_numpy_dtypes" in inspect.signature(BaseRunner.get_input_metadata).parameters
    assert "check_inputs" in inspect.signature(BaseRunner.infer).parameters
    assert issubclass(TrtRunner, BaseRunner)


def test_polygraphy_decides_explicit_batch_as_our_plan_does():
    """Polygraphy's CreateNetwork adds EXPLICIT_BATCH below TensorRT 10, which is what plan.network_flags says."""
    src = inspect.getsource(importlib.import_module("polygraphy.backend.trt.loader").CreateNetwork.__init__)
    assert 'version < mod.version("10.0")' in src
    for version in VERSIONS:
        assert all(
            ("EXPLICIT_BATCH" in p.network_flags) == (TrtVersion.parse(version) < TrtVersion(10, 0))
            for p in PLANS[version]
        )


def test_polygraphy_floor_is_installed():
    from importlib.metadata import version as dist_version

    text = (Path(__file__).resolve().parent.parent / "pyproject.toml").read_text()
    floor = re.search(r'"polygraphy>=([0-9.]+)"', text)[1]
    have = tuple(int(x) for x in dist_version("polygraphy").split(".")[:3])
    assert have >= tuple(int(x) for x in floor.split("."))
