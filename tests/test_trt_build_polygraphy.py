"""build_engine driven end to end through Polygraphy's real loaders, with a recording stand-in for tensorrt.

No TensorRT exists on our CPU machines, so this proves the wiring, not TensorRT's behaviour: our plan
goes through NetworkFromOnnxPath → PostprocessNetwork / SetLayerPrecisions → CreateConfig →
PostprocessConfig → EngineBytesFromNetwork exactly as Polygraphy runs them, the Softmax and --keep-float
layers get their precisions, the engine, sidecar and calibration cache are written, and every TensorRT
name touched on a plan's path — by our code or by Polygraphy because of the plan — exists in that
version's bindings (tests/data/tensorrt_api), apart from the probes Polygraphy guards with
try/except AttributeError. The stand-in answers any attribute with a recording object; classes
TensorRT code subclasses (ILogger, the calibrators) are plain classes.
"""

from __future__ import annotations

import json
import sys
import types

import pytest

from clo_export.engine.plan import BuildRequest
from tests.test_trt_api import REMOVED_IN_11, VERSIONS, api_names
from tests.trt_exports import exports

# Names Polygraphy 0.53.6 reads inside try/except AttributeError or contextlib.suppress (or only to
# describe the config in its log), so a version without them still builds.
POLYGRAPHY_PROBES = {
    "int8_calibrator", "get_calibration_profile", "TF32", "clear_flag", "ProfilingVerbosity", "DETAILED",
    "profiling_verbosity", "PreviewFeature", "QuantizationFlag", "TacticSource", "engine_capability",
    "is_polygraphy_calibrator", "set_input_metadata", "precision_is_set", "SHAPE", "num_optimization_profiles",
    "DeviceType", "DLA", "default_device_type", "DLA_core", "num_inputs", "get_input", "get_tactic_sources",
    "get_preview_feature", "get_quantization_flag", "get_memory_pool_limit", "builder_optimization_level",
    "hardware_compatibility_level", "get_flag", "num_DLA_cores", "precision",
}


class Rec:
    """Any TensorRT object: attributes are recorded and cached (so enum members compare by identity)."""

    touched: list = []

    def __init__(self, path: str = "trt", **fields):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_kids", {})
        object.__setattr__(self, "_items", [])
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def __getattr__(self, name):
        if name == "__members__":
            return {}
        if name.startswith("_"):
            raise AttributeError(name)
        Rec.touched.append(name)
        return self._kids.setdefault(name, Rec(f"{self._path}.{name}"))

    def __setattr__(self, name, value):
        Rec.touched.append(name)
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        if self._path.endswith(".create_network"):
            return NETWORK[0]
        if self._path.endswith(".build_serialized_network"):
            return b"serialized engine"
        return Rec(self._path + "()")

    def __iter__(self):
        return iter(self._items)

    def __int__(self):
        return 0

    __index__ = __int__
    __len__ = __int__

    def __bool__(self):
        return True

    def __lt__(self, other):
        return False

    __gt__ = __le__ = __ge__ = __lt__

    def __or__(self, other):
        return 0

    __ror__ = __lshift__ = __rlshift__ = __or__

    def __str__(self):
        return self._path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


NETWORK: list = []


def forget_tensorrt() -> None:
    """Polygraphy's modules each cache the tensorrt they first imported; make them import it again."""
    import polygraphy.backend.trt  # noqa: F401 (loads the modules that hold a lazy tensorrt)

    for name, module in list(sys.modules.items()):
        lazy = vars(module).get("trt") if name.startswith("polygraphy") and module is not None else None
        if type(lazy).__name__ == "LazyModule":
            object.__setattr__(lazy, "module", None)
SOFTMAX_NODE, CONV_NODE = "/model.9/Softmax", "/model.24/m.0/Conv"


@pytest.fixture()
def fake_trt(monkeypatch):
    """A recording tensorrt of a given version whose network holds a Softmax and a Conv layer."""

    def install(version: str):
        root = Rec()
        classes: dict = {}

        def module_attr(name):
            if name[:1] == "I" and name[1:2].isupper():
                Rec.touched.append(name)
                return classes.setdefault(name, type(name, (), {"__init__": lambda self, *a, **k: None}))
            return getattr(root, name)

        mod = types.ModuleType("tensorrt")
        mod.__version__ = version
        mod.__getattr__ = module_attr
        layers = [Rec("softmax", name=SOFTMAX_NODE, type=root.LayerType.SOFTMAX, num_outputs=1,
                      set_output_type=lambda j, t: Rec.touched.append("set_output_type")),
                  Rec("conv", name=CONV_NODE, type=root.LayerType.CONVOLUTION, num_outputs=1)]
        network = Rec("network")
        object.__setattr__(network, "_items", layers)
        NETWORK[:] = [network]
        Rec.touched = []
        monkeypatch.setitem(sys.modules, "tensorrt", mod)
        forget_tensorrt()
        monkeypatch.setattr("clo_export.engine.gpu.gpu_identity", lambda device=0: ("Stand-in GPU", (8, 7)))
        return types.SimpleNamespace(root=root, layers=layers)

    yield install
    forget_tensorrt()


CASES = [
    ("fp32", BuildRequest(), "fp32"),
    ("fp16", BuildRequest(precision="fp16"), "fp32"),
    ("qdq", BuildRequest(precision="int8"), "int8"),
    ("entropy", BuildRequest(precision="int8", calibrator="entropy", keep_float=(CONV_NODE,)), "fp32"),
    ("dla", BuildRequest(precision="fp16", dla_core=1, keep_float=(CONV_NODE,), workspace_gb=1.0), "fp32"),
]


@pytest.mark.parametrize("version", ["8.5.2", "10.3.0", "10.12.0", "11.4.1"])
@pytest.mark.parametrize("name, request_, onnx_kind", CASES, ids=[c[0] for c in CASES])
def test_build_engine_through_polygraphy(version, name, request_, onnx_kind, fake_trt, tmp_path):
    from clo_export.engine.build import build_engine
    from clo_export.errors import CloExportError

    trt = fake_trt(version)
    e = exports()
    source = tmp_path / ("m.int8.onnx" if onnx_kind == "int8" else "m.onnx")
    source.write_bytes((e.int8 if onnx_kind == "int8" else e.fp32).read_bytes())
    calib = (str(e.fp32.parent / "calib"),) if request_.calibrator != "qdq" else ()
    try:
        built = build_engine(source, request_, tmp_path / "out.engine", calib=calib, num=16, check=False)
    except CloExportError as err:  # what this version refuses is make_plan's business (test_trt_plan)
        assert any(w in str(err) for w in ("removed in TensorRT 11", "DLA unsupported")), err
        return
    plan = built.plan
    assert (tmp_path / "out.engine").read_bytes() == b"serialized engine"
    side = json.loads((tmp_path / "out.engine.json").read_text())
    assert side["tensorrt_version"] == version and side["gpu_name"] == "Stand-in GPU" and side["precision"] == plan.precision
    assert side["parity"] == {"status": "not checked", "passed": None}  # the check itself: tests/test_trt_check.py
    softmax, conv = trt.layers
    if plan.softmax_fp32_via_layer_precision:
        assert softmax.precision is trt.root.DataType.FLOAT
    else:
        assert "precision" not in vars(softmax)
    if plan.layer_precisions:
        assert conv.precision is trt.root.DataType.FLOAT
    if plan.dla_core:
        assert "DLA_core" in Rec.touched
    if plan.use_implicit_calibrator:
        assert "IInt8EntropyCalibrator2" in Rec.touched
    names = api_names(VERSIONS[version])
    unknown = set(Rec.touched) - names - POLYGRAPHY_PROBES
    assert not unknown, f"TensorRT {version} lacks {sorted(unknown)} touched for {name}"
    if version.startswith("11."):
        assert not (set(Rec.touched) - POLYGRAPHY_PROBES) & REMOVED_IN_11


def test_quantizing_on_the_way_needs_the_export_python(fake_trt, tmp_path, monkeypatch):
    """On a JetPack 5 runtime (Python 3.8) --int8 --calib refuses in one line instead of importing the quantizer."""
    from clo_export.engine import build
    from clo_export.errors import CloExportError

    fake_trt("8.5.2")
    monkeypatch.setattr(build, "sys", types.SimpleNamespace(version_info=(3, 8, 18)))
    source = tmp_path / "m.onnx"
    source.write_bytes(exports().fp32.read_bytes())
    with pytest.raises(CloExportError, match=r"needs Python >= 3.10; run clo-export quantize m.onnx") as e:
        build.build_engine(source, BuildRequest(precision="int8"), calib=("imgs/",))
    assert "\n" not in str(e.value) and not list(tmp_path.glob("*.int8.onnx"))
