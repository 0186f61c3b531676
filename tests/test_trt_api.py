"""Every TensorRT name build.py uses exists in the TensorRT releases whose plans reach it.

The name lists in tests/data/tensorrt_api/ were extracted from the TensorRT Python bindings
wheels by tools/trt_api_names.py (nothing is downloaded here). 8.6.1 stands in for 8.5 (no 8.5
bindings wheel is on PyPI) and 11.4.0 for 11.4.1 (the DLA release).

How names are attributed to plans (the scheme build.py follows, see its docstring):
- Static walk with `ast`: every attribute read or written in build.py whose root name is not
  in NOT_TENSORRT is a TensorRT name (on the module or on TensorRT objects). Names inside a
  function `_when_<field>[__suffix]` belong to that plan field; every call of such a function
  must sit in the body of `if` statements that mention `plan.<field>`, and those `if` tests are
  evaluated against each plan to decide whether the function runs. Names elsewhere are used by
  every plan. Enum members resolved with `getattr(trt.Enum, name)` inside
  `for name in plan.<field>` come from that plan field's values.
- Dynamic check: build_engine runs against a fake `tensorrt` that records every attribute
  touched; the record must be inside the version's list.
The list is flat (no enum qualification): "INT8" exists in 11 as DataType.INT8, so names that
11 removed are also checked by name against every 11.x plan (REMOVED_IN_11).
"""

from __future__ import annotations

import ast
import itertools
import re
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

import clo_export.engine.build as build_mod
from clo_export.engine.plan import BuildPlan, BuildRequest, make_plan
from clo_export.engine.version import TrtVersion
from clo_export.errors import CloExportError

LISTS = Path(__file__).parent / "data" / "tensorrt_api"
BUILD_PY = Path(build_mod.__file__)
# plan version -> the API list that stands for it
VERSIONS = {
    "8.5.2": "8.6.1",
    "8.6.1": "8.6.1",
    "10.3.0": "10.3.0",
    "10.7.0": "10.3.0",
    "10.12.0": "10.12.0.36",
    "11.4.0": "11.4.0.106",
    "11.4.1": "11.4.0.106",
}
# Root names in build.py that never hold a TensorRT object.
NOT_TENSORRT = {"plan", "log", "TRT_LOG", "logging", "time", "Path", "tmp", "path", "SEVERITY_TO_LOGGING"}
REMOVED_IN_11 = {
    "IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "EXPLICIT_BATCH", "FP16", "INT8",
    "OBEY_PRECISION_CONSTRAINTS", "PREFER_PRECISION_CONSTRAINTS", "int8_calibrator", "precision",
    "set_output_type", "set_calibration_profile",
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


def _trt_attrs(tree: ast.AST) -> set[str]:
    """Attribute names used on TensorRT objects inside `tree`."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            root = _root(node)
            if isinstance(root, ast.Name) and root.id in NOT_TENSORRT:
                continue
            if not isinstance(root, ast.Name):  # "; ".join(...) and other literals
                continue
            if node.attr.startswith("__") and node.attr != "__version__":
                continue
            out.add(node.attr)
    return out


def _mentions_plan_field(test: ast.AST, field: str) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == field and isinstance(n.value, ast.Name)
               and n.value.id == "plan" for n in ast.walk(test))


class Walk:
    """What build.py uses: unconditional names, names per gated function, dynamic enum fields."""

    def __init__(self, source: str) -> None:
        tree = ast.parse(source)
        self.always: set[str] = set()
        self.gated: dict[str, set[str]] = {}
        self.gates: dict[str, list[ast.expr]] = {}  # gated function -> enclosing if tests
        self.dynamic: dict[str, str] = {}  # plan field -> enum class resolved with getattr
        for fn in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
            m = WHEN_RE.match(fn.name)
            if m:
                assert m["field"] in PLAN_FIELDS, f"{fn.name} is not named after a BuildPlan field"
                self.gated[fn.name] = _trt_attrs(fn)
            else:
                self.always |= _trt_attrs(fn)
                self._find_calls(fn.body, [])
                self._find_getattr(fn)
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

    def _find_getattr(self, fn: ast.FunctionDef) -> None:
        for loop in (n for n in ast.walk(fn) if isinstance(n, ast.For)):
            it = loop.iter
            if not (isinstance(it, ast.Attribute) and isinstance(it.value, ast.Name) and it.value.id == "plan"):
                continue
            for call in ast.walk(loop):
                if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "getattr":
                    enum = call.args[0]
                    assert isinstance(enum, ast.Attribute) and call.args[1].id == loop.target.id
                    self.dynamic[it.attr] = enum.attr
        for call in (n for n in ast.walk(fn) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "getattr"):
            enum = call.args[0]
            assert enum.attr in self.dynamic.values(), "getattr outside a `for name in plan.<field>` loop"

    def used_by(self, plan: BuildPlan) -> set[str]:
        """TensorRT names that build_engine touches for `plan`."""
        used = set(self.always)
        for fn, tests in self.gates.items():
            if all(eval(compile(ast.Expression(t), "<if>", "eval"), {"plan": plan}) for t in tests):
                used |= self.gated[fn]
        for field, enum in self.dynamic.items():
            used |= {enum, *getattr(plan, field)}
        if plan.calibrator_class:
            used.add(plan.calibrator_class)  # the calib package subclasses it
        return used


WALK = Walk(BUILD_PY.read_text())


def all_plans(version: str) -> list[BuildPlan]:
    """Every distinct plan make_plan accepts for `version` over a grid of requests."""
    grid = itertools.product(
        ("fp32", "fp16", "int8"), ("qdq", "entropy", "minmax"), (False, True), (False, True),
        (None, (1, 1, 1), (1, 4, 8)), (None, 0), (False, True), (False, True), (None, 4.0), (None, "tc.bin"),
    )
    plans = []
    for prec, cal, qdq, fp16, batch, dla, calib, strong, ws, tc in grid:
        req = BuildRequest(precision=prec, calibrator=cal, is_qdq=qdq, is_fp16=fp16, dynamic_batch=batch is not None,
                           batch_range=batch, dla_core=dla, has_calib=calib, strongly_typed=strong,
                           workspace_gb=ws, timing_cache=tc)
        try:
            plans.append(make_plan(TrtVersion.parse(version), req))
        except CloExportError:
            pass
    return plans


PLANS = {v: all_plans(v) for v in VERSIONS}


def test_walker_sees_the_build():
    assert {"Builder", "create_network", "OnnxParser", "parse_from_file", "num_errors", "get_error",
            "create_builder_config", "set_flag", "build_serialized_network", "ILogger"} <= WALK.always
    assert WALK.dynamic == {"network_flags": "NetworkDefinitionCreationFlag", "builder_flags": "BuilderFlag"}
    assert {"precision", "set_output_type", "LayerType", "SOFTMAX"} <= WALK.gated[
        "_when_softmax_fp32_via_layer_precision"]
    assert {"int8_calibrator", "set_calibration_profile"} == WALK.gated["_when_use_implicit_calibrator"]
    assert not REMOVED_IN_11 & WALK.always


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
    assert REMOVED_IN_11 - {"PREFER_PRECISION_CONSTRAINTS"} <= used  # the gates are not vacuous


def test_lists_match_the_reference_table():
    v86, v103, v1012, v11 = (api_names(v) for v in ("8.6.1", "10.3.0", "10.12.0.36", "11.4.0.106"))
    for cls in ("IInt8EntropyCalibrator2", "IInt8MinMaxCalibrator", "int8_calibrator", "OBEY_PRECISION_CONSTRAINTS",
                "EXPLICIT_BATCH", "FP16", "set_output_type"):
        assert cls in v86 and cls in v103 and cls in v1012 and cls not in v11, cls
    assert "STRONGLY_TYPED" not in v86 and "STRONGLY_TYPED" in v103 and "STRONGLY_TYPED" in v11
    for name in ("set_memory_pool_limit", "WORKSPACE", "build_serialized_network", "execute_async_v3",
                 "set_tensor_address", "create_timing_cache", "DLA_core", "GPU_FALLBACK"):
        assert all(name in s for s in (v86, v103, v1012, v11)), name
    assert "execute_async_v2" in v86 and "execute_async_v2" not in v103


@pytest.mark.parametrize("path", sorted(LISTS.glob("*.txt")), ids=lambda p: p.name)
def test_lists_are_small_and_documented(path):
    assert path.stat().st_size < 300_000
    assert path.read_text().startswith("# made by: python tools/trt_api_names.py")


# ---- dynamic check: build_engine against a recording fake tensorrt ------------------------

class _Rec:
    """Records every public attribute read or written, to compare with the version's list."""

    seen: set[str] = set()

    def __getattribute__(self, name: str) -> Any:
        if not name.startswith("_"):
            _Rec.seen.add(name)
        return object.__getattribute__(self, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if not name.startswith("_"):
            _Rec.seen.add(name)
        object.__setattr__(self, name, value)


class _Enum(_Rec):
    def __init__(self, **members: int) -> None:
        for k, v in members.items():
            object.__setattr__(self, k, v)

    def __getattr__(self, name: str) -> str:  # any other member: a token naming it
        return f"member:{name}"


class _Tensor(_Rec):
    def __init__(self, name: str, shape: tuple[int, ...]) -> None:
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "shape", shape)


class _Layer(_Rec):
    def __init__(self, kind: str) -> None:
        object.__setattr__(self, "type", kind)
        object.__setattr__(self, "num_outputs", 1)
        object.__setattr__(self, "_output_types", {})

    def set_output_type(self, i: int, dtype: Any) -> None:
        self._output_types[i] = dtype


class _Network(_Rec):
    def __init__(self, flags: int) -> None:
        object.__setattr__(self, "_flags", flags)
        object.__setattr__(self, "_layers", [_Layer("member:CONVOLUTION"), _Layer("member:SOFTMAX")])
        object.__setattr__(self, "num_layers", 2)
        object.__setattr__(self, "num_inputs", 1)
        object.__setattr__(self, "num_outputs", 1)

    def get_layer(self, i: int) -> _Layer:
        return self._layers[i]

    def get_input(self, i: int) -> _Tensor:
        return _Tensor("images", (-1, 3, 64, 64))

    def get_output(self, i: int) -> _Tensor:
        return _Tensor("output0", (-1, 252, 85))


class _Config(_Rec):
    def __init__(self) -> None:
        for k, v in dict(_flags=[], _pools={}, _profiles=[], _cache=None, int8_calibrator=None,
                         _calibration_profile=None, default_device_type=None, DLA_core=-1).items():
            object.__setattr__(self, k, v)

    def set_flag(self, flag: Any) -> None:
        self._flags.append(flag)

    def set_memory_pool_limit(self, pool: Any, size: int) -> None:
        self._pools[pool] = size

    def add_optimization_profile(self, profile: Any) -> None:
        self._profiles.append(profile)

    def set_calibration_profile(self, profile: Any) -> None:
        object.__setattr__(self, "_calibration_profile", profile)

    def create_timing_cache(self, data: bytes) -> bytes:
        return data

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        object.__setattr__(self, "_cache", cache)
        return True

    def get_timing_cache(self) -> Any:
        cfg = self

        class _Cache(_Rec):
            def serialize(self) -> bytes:
                return cfg._cache + b"+new"
        return _Cache()


class _Profile(_Rec):
    def set_shape(self, name: str, lo: tuple, opt: tuple, hi: tuple) -> None:
        object.__setattr__(self, "_shape", (name, lo, opt, hi))


class _Builder(_Rec):
    def __init__(self, logger: Any) -> None:
        object.__setattr__(self, "_logger", logger)

    def create_network(self, flags: int) -> _Network:
        net = _Network(flags)
        FakeTrt.last["network"] = net
        return net

    def create_builder_config(self) -> _Config:
        FakeTrt.last["config"] = _Config()
        return FakeTrt.last["config"]

    def create_optimization_profile(self) -> _Profile:
        return _Profile()

    def build_serialized_network(self, network: Any, config: Any) -> bytes:
        self._logger.log(2, "fake warning")
        return b"ENGINE-BYTES"


class _Parser(_Rec):
    num_errors = 0

    def __init__(self, network: Any, logger: Any) -> None:
        pass

    def parse_from_file(self, path: str) -> bool:
        return Path(path).exists()

    def get_error(self, i: int) -> str:
        return "bad node"


class FakeTrt(_Rec):
    """A tensorrt module stand-in; only behaviour build.py needs."""

    last: dict[str, Any] = {}

    def __init__(self, version: str) -> None:
        for k, v in dict(
            __version__=version, ILogger=type("ILogger", (), {}), Builder=_Builder, OnnxParser=_Parser,
            NetworkDefinitionCreationFlag=_Enum(EXPLICIT_BATCH=0, STRONGLY_TYPED=1), BuilderFlag=_Enum(),
            MemoryPoolType=_Enum(), LayerType=_Enum(), DeviceType=_Enum(), float32="float32",
        ).items():
            object.__setattr__(self, k, v)


RUNS = [
    ("8.5.2", dict(precision="fp16")),
    ("8.5.2", dict(precision="int8", calibrator="entropy", has_calib=True, dynamic_batch=True, batch_range=(1, 2, 4))),
    ("10.3.0", dict(precision="int8", is_qdq=True, dla_core=1)),
    ("10.12.0", dict(precision="fp16", is_fp16=True, strongly_typed=True, workspace_gb=1, timing_cache="tc")),
    ("11.4.0", dict(precision="int8", is_qdq=True, dynamic_batch=True, batch_range=(1, 4, 8), timing_cache="tc")),
    ("11.4.1", dict(precision="fp16", is_fp16=True, dla_core=0)),
]


@pytest.mark.parametrize("version, kw", RUNS)
def test_build_engine_against_fake(version, kw, tmp_path, monkeypatch, caplog):
    fake = FakeTrt(f"{version}.1")
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    if "timing_cache" in kw:
        kw = {**kw, "timing_cache": str(tmp_path / "tc.bin")}
        (tmp_path / "tc.bin").write_bytes(b"old")
    plan = make_plan(TrtVersion.parse(version), BuildRequest(input_shape=(-1, 3, 64, 64), **kw))
    onnx, out = tmp_path / "m.onnx", tmp_path / "out" / "m.engine"
    onnx.write_bytes(b"onnx")
    stages: list[str] = []
    _Rec.seen = set()
    info = build_mod.build_engine(onnx, out, plan, calibrator=object() if plan.use_implicit_calibrator else None,
                                  progress=stages.append)
    assert not _Rec.seen - api_names(VERSIONS[version]), f"fake saw names outside the {version} list"
    assert out.read_bytes() == b"ENGINE-BYTES"  # nothing prepended
    assert stages == ["parse", "build", "write"]
    assert info.input_names == ("images",) and info.output_names == ("output0",) and info.engine_bytes == 12
    assert "fake warning" in caplog.text and caplog.records[-1].name == "clo_export.tensorrt"
    net, cfg = FakeTrt.last["network"], FakeTrt.last["config"]
    assert cfg._flags == [f"member:{f}" for f in plan.builder_flags]
    assert net._flags == sum(1 << {"EXPLICIT_BATCH": 0, "STRONGLY_TYPED": 1}[f] for f in plan.network_flags)
    softmax = net._layers[1]
    pinned = plan.softmax_fp32_via_layer_precision
    assert (object.__getattribute__(softmax, "__dict__").get("precision") == "float32") == pinned
    assert softmax._output_types == ({0: "float32"} if pinned else {})
    assert not net._layers[0]._output_types
    assert (cfg.DLA_core, cfg.default_device_type) == (
        (plan.dla_core, "member:DLA") if plan.dla_core is not None else (-1, None))
    if plan.profile:
        assert cfg._profiles[0]._shape == ("images", plan.profile.min, plan.profile.opt, plan.profile.max)
        assert (cfg._calibration_profile is cfg._profiles[0]) == plan.use_implicit_calibrator
    if plan.timing_cache:
        assert cfg._cache == b"old" and Path(plan.timing_cache).read_bytes() == b"old+new"
    assert cfg._pools == ({"member:WORKSPACE": plan.workspace_bytes} if plan.workspace_bytes else {})


def test_build_engine_refusals(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", FakeTrt("10.3.0"))
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"onnx")
    with pytest.raises(CloExportError, match="plan is for TensorRT 8.6.1 but this is TensorRT 10.3.0"):
        build_mod.build_engine(onnx, tmp_path / "e", make_plan("8.6.1", BuildRequest()))
    p = make_plan("10.3.0", BuildRequest(precision="int8", calibrator="minmax", has_calib=True))
    with pytest.raises(CloExportError, match="pass calibrator="):
        build_mod.build_engine(onnx, tmp_path / "e", p)
    with pytest.raises(CloExportError, match="cannot parse"):
        build_mod.build_engine(tmp_path / "missing.onnx", tmp_path / "e", make_plan("10.3.0", BuildRequest()))
    with pytest.raises(CloExportError, match="unknown log level"):
        build_mod.build_engine(onnx, tmp_path / "e", make_plan("10.3.0", BuildRequest()), log_level="loud")
    assert not (tmp_path / "e").exists()


# ---- the runtime backend: backends/trt.py ---------------------------------------------------
# The runner has no plan-dependent paths: every TensorRT name it uses must exist in every
# supported release. Its convention (module docstring): TensorRT objects are held only in
# variables named RUNTIME_ROOTS or in self.<RUNTIME_SELF>.

import clo_export.backends.trt as runtime_mod  # noqa: E402
from tests.test_trt_runner import Rec, TensorRTRunner, write_engine  # noqa: E402
from tests.test_trt_runner import gpu  # noqa: E402, F401 (fixture)

RUNTIME_PY = Path(runtime_mod.__file__)
RUNTIME_ROOTS = {"trt", "runtime", "engine", "context"}
RUNTIME_SELF = {"_runtime", "_engine", "_context"}
# The bindings API: deprecated in 8.x, removed in 10; the runner must not touch any of it.
BINDINGS_API = {
    "execute_async_v2", "execute_v2", "execute_async", "execute", "get_binding_shape", "set_binding_shape",
    "get_binding_index", "get_binding_name", "get_binding_dtype", "binding_is_input", "num_bindings",
    "max_batch_size", "all_binding_shapes_specified", "get_binding_bytes_per_component",
}
RUNTIME_CORE = {
    "Runtime", "deserialize_cuda_engine", "num_io_tensors", "get_tensor_name", "get_tensor_mode",
    "get_tensor_dtype", "get_tensor_shape", "get_tensor_profile_shape", "create_execution_context",
    "set_input_shape", "set_tensor_address", "execute_async_v3", "TensorIOMode", "INPUT", "num_layers",
    "__version__",
}


def _chain(node: ast.AST) -> tuple[ast.AST, list[str]]:
    """Root node and the attribute names from it up to `node` (through calls and subscripts)."""
    names = []
    while isinstance(node, (ast.Attribute, ast.Call, ast.Subscript)):
        if isinstance(node, ast.Attribute):
            names.append(node.attr)
            node = node.value
        else:
            node = node.func if isinstance(node, ast.Call) else node.value
    return node, names[::-1]


def runtime_names(source: str) -> set[str]:
    """TensorRT attribute names used in backends/trt.py, by the naming convention."""
    out = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Attribute):
            continue
        root, names = _chain(node)
        if not isinstance(root, ast.Name):
            continue
        if root.id in RUNTIME_ROOTS or (root.id == "self" and len(names) >= 2 and names[0] in RUNTIME_SELF):
            out.add(node.attr)
    return out


RUNTIME_USED = runtime_names(RUNTIME_PY.read_text())


def test_runtime_walker_sees_the_named_tensor_api():
    assert RUNTIME_CORE <= RUNTIME_USED, RUNTIME_CORE - RUNTIME_USED
    assert not {"memory", "stream", "_io", "_host", "_dev"} & RUNTIME_USED  # our own objects are not counted


@pytest.mark.parametrize("list_version", sorted(set(VERSIONS.values())))
def test_runtime_names_exist_in_every_version(list_version):
    missing = RUNTIME_USED - api_names(list_version)
    assert not missing, f"backends/trt.py uses {sorted(missing)}, absent from TensorRT {list_version}"


def test_runtime_uses_nothing_from_the_bindings_api():
    assert not RUNTIME_USED & BINDINGS_API
    gone = {n for n in BINDINGS_API if n in api_names("8.6.1") and n not in api_names("10.3.0")}
    assert {"execute_async_v2", "get_binding_shape", "binding_is_input", "num_bindings"} <= gone  # lists agree


@pytest.mark.parametrize("dynamic", [False, True])
def test_runtime_touches_only_what_the_walker_saw(dynamic, tmp_path, gpu):  # noqa: F811
    """Run the runner against the recording fake: everything touched is in the static set and every list."""
    from tests.test_trt_runner import io_spec

    Rec.seen = set()
    with TensorRTRunner(write_engine(tmp_path, io_spec(dynamic=dynamic))) as r:
        r.infer({"images": __import__("numpy").zeros((2, 3, 8, 8), "float32")})
    seen = Rec.seen - {"__version__"}
    assert {"execute_async_v3", "set_tensor_address", "num_io_tensors"} <= seen
    # ILogger is build.make_logger's (checked with build.py above)
    assert seen <= RUNTIME_USED | {"ILogger"}, f"touched outside the convention: {seen - RUNTIME_USED}"
    for list_version in set(VERSIONS.values()):
        assert seen <= api_names(list_version)
