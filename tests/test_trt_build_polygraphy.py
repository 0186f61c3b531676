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
import types

import pytest

from clo_export.engine.plan import BuildRequest
from tests.fake_tensorrt import CONV_NODE, Rec
from tests.test_trt_api import REMOVED_IN_11, VERSIONS, api_names
from tests.trt_exports import exports

# Names Polygraphy 0.53.6 reads inside try/except AttributeError or contextlib.suppress (or only to
# describe the config in its log), so a version without them still builds.
POLYGRAPHY_PROBES = {
    "int8_calibrator",
    "get_calibration_profile",
    "TF32",
    "clear_flag",
    "ProfilingVerbosity",
    "DETAILED",
    "profiling_verbosity",
    "PreviewFeature",
    "QuantizationFlag",
    "TacticSource",
    "engine_capability",
    "is_polygraphy_calibrator",
    "set_input_metadata",
    "precision_is_set",
    "SHAPE",
    "num_optimization_profiles",
    "DeviceType",
    "DLA",
    "default_device_type",
    "DLA_core",
    "num_inputs",
    "get_input",
    "get_tactic_sources",
    "get_preview_feature",
    "get_quantization_flag",
    "get_memory_pool_limit",
    "builder_optimization_level",
    "hardware_compatibility_level",
    "get_flag",
    "num_DLA_cores",
    "precision",
}


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
    assert (
        side["tensorrt_version"] == version
        and side["gpu_name"] == "Stand-in GPU"
        and side["precision"] == plan.precision
    )
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
