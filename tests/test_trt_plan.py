"""make_plan across TensorRT 8.5 … 11.x, every refused combination, and the engine sidecar."""

from __future__ import annotations

import dataclasses
import json

import pytest

from clo_export.engine.plan import GATES, BuildRequest, ProfileShape, has, make_plan
from clo_export.engine.sidecar import EngineSidecar, check_compatible
from clo_export.engine.version import TrtVersion
from clo_export.errors import CloExportError
from clo_export.fileio import sidecar_path

V85, V86, V103, V1012, V110, V114, V1141 = "8.5.2.2", "8.6.1", "10.3.0", "10.12.0.36", "11.0.0", "11.4.0.106", "11.4.1"
WEAK = (V85, V86, V103, V1012)
STRONG = (V110, V114)


def plan(version: str, **kw):
    return make_plan(TrtVersion.parse(version), BuildRequest(**kw))


def refused(version: str, match: str, **kw) -> None:
    with pytest.raises(CloExportError, match=match):
        plan(version, **kw)


# ---- versions -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("8.5.2.2", (8, 5, 2)),
        ("10.3.0", (10, 3, 0)),
        ("11.4.0.106", (11, 4, 0)),
        ("10.7.0.post1", (10, 7, 0)),
        ("10.3", (10, 3, 0)),
    ],
)
def test_version_parse(text, expected):
    v = TrtVersion.parse(text)
    assert (v.major, v.minor, v.patch) == expected
    assert TrtVersion.parse(v) is v


def test_version_order_and_str():
    assert TrtVersion.parse("8.6.1") < TrtVersion(10, 0) < TrtVersion.parse("10.12.0") < TrtVersion(11, 4, 1)
    assert TrtVersion.parse("11.4.0.106") == TrtVersion(11, 4, 0)
    assert str(TrtVersion.parse("8.5.2.2")) == "8.5.2"
    with pytest.raises(CloExportError, match="version like"):
        TrtVersion.parse("eleven")


def test_gates_are_a_table():
    assert all(isinstance(lo, TrtVersion) and (hi is None or lo < hi) for lo, hi in GATES.values())
    assert has(TrtVersion(10, 7), "dla") and not has(TrtVersion(10, 8), "dla")
    assert not has(TrtVersion(11, 4, 0), "dla_11") and has(TrtVersion(11, 4, 1), "dla_11")


# ---- what each version does ---------------------------------------------------------------


@pytest.mark.parametrize("version", [*WEAK, *STRONG])
def test_fp32(version):
    p = plan(version)
    assert p.onnx_needed == "fp32" and not p.needs_quantize and not p.needs_fp16_onnx
    assert "FP16" not in p.builder_flags and "INT8" not in p.builder_flags
    assert not p.softmax_fp32_via_layer_precision and not p.use_implicit_calibrator
    assert p.explicit_batch_flag == (version in (V85, V86))
    assert p.network_flags == (("EXPLICIT_BATCH",) if version in (V85, V86) else ())
    assert p.strongly_typed == (version in STRONG)


@pytest.mark.parametrize("version", WEAK)
def test_fp16_weakly_typed(version):
    p = plan(version, precision="fp16")
    assert p.builder_flags == ("FP16", "OBEY_PRECISION_CONSTRAINTS")
    assert p.softmax_fp32_via_layer_precision and not p.strongly_typed
    assert p.onnx_needed == "fp32" and not p.needs_fp16_onnx
    assert any("Softmax" in n for n in p.notes)
    assert any("deprecates" in n for n in p.notes) == (version == V1012)


@pytest.mark.parametrize("version", WEAK)
def test_fp16_onnx_is_accepted_weakly_typed(version):
    p = plan(version, precision="fp16", is_fp16=True)
    assert p.onnx_needed == "fp16" and not p.needs_fp16_onnx and "FP16" in p.builder_flags


@pytest.mark.parametrize("version", STRONG)
def test_fp16_on_11_uses_the_fp16_onnx(version):
    p = plan(version, precision="fp16")
    assert p.strongly_typed and p.onnx_needed == "fp16" and p.needs_fp16_onnx
    assert p.builder_flags == () and p.network_flags == ()  # STRONGLY_TYPED is implied (and ignored) on 11
    assert not p.softmax_fp32_via_layer_precision
    assert not plan(version, precision="fp16", is_fp16=True).needs_fp16_onnx


@pytest.mark.parametrize("version", (V103, V1012))
def test_strongly_typed_opt_in_on_10(version):
    p = plan(version, precision="fp16", is_fp16=True, strongly_typed=True)
    assert p.strongly_typed and p.network_flags == ("STRONGLY_TYPED",) and p.builder_flags == ()
    assert not p.softmax_fp32_via_layer_precision and p.onnx_needed == "fp16"
    q = plan(version, precision="int8", is_qdq=True, strongly_typed=True)
    assert q.onnx_needed == "qdq" and q.builder_flags == () and q.network_flags == ("STRONGLY_TYPED",)


@pytest.mark.parametrize("version", (V85, V86))
def test_strongly_typed_refused_before_10(version):
    refused(version, "--strongly-typed needs TensorRT 10", strongly_typed=True)


@pytest.mark.parametrize("version", WEAK)
def test_int8_qdq_weakly_typed(version):
    p = plan(version, precision="int8", is_qdq=True)
    assert p.onnx_needed == "qdq" and not p.needs_quantize
    assert p.builder_flags == ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS")
    assert p.softmax_fp32_via_layer_precision and not p.use_implicit_calibrator and p.calibrator_class is None


@pytest.mark.parametrize("version", STRONG)
def test_int8_on_11_is_qdq_only(version):
    p = plan(version, precision="int8", is_qdq=True)
    assert p.onnx_needed == "qdq" and p.builder_flags == () and p.strongly_typed
    assert not p.use_implicit_calibrator and not p.softmax_fp32_via_layer_precision


@pytest.mark.parametrize("version", [*WEAK, *STRONG])
def test_int8_fp32_onnx_with_calib_quantizes_first(version):
    p = plan(version, precision="int8", has_calib=True)
    assert p.needs_quantize and p.onnx_needed == "qdq"
    assert any("quantized" in n for n in p.notes)


@pytest.mark.parametrize("version", WEAK)
@pytest.mark.parametrize(
    "calibrator, cls", [("entropy", "IInt8EntropyCalibrator2"), ("minmax", "IInt8MinMaxCalibrator")]
)
def test_implicit_calibrators_below_11(version, calibrator, cls):
    p = plan(version, precision="int8", calibrator=calibrator, has_calib=True)
    assert p.use_implicit_calibrator and p.calibrator_class == cls
    assert p.onnx_needed == "fp32" and not p.needs_quantize
    assert "INT8" in p.builder_flags and p.softmax_fp32_via_layer_precision
    assert any("deprecated" in n for n in p.notes) == (version in (V103, V1012))


def test_workspace_timing_cache_pass_through():
    p = plan(V103, workspace_gb=2, timing_cache="/tmp/tc.bin")
    assert p.workspace_bytes == 2 << 30 and p.timing_cache == "/tmp/tc.bin"
    assert plan(V103).workspace_bytes is None


@pytest.mark.parametrize("version", [*WEAK, *STRONG])
def test_dynamic_batch_profile(version):
    p = plan(version, dynamic_batch=True, batch_range=(1, 4, 8), input_shape=(-1, 3, 640, 640))
    assert p.profile == ProfileShape("images", (1, 3, 640, 640), (4, 3, 640, 640), (8, 3, 640, 640))
    q = plan(version, dynamic_batch=True)
    assert q.profile.min == q.profile.max == (1, 3, 640, 640) and any("batch 1" in n for n in q.notes)
    assert plan(version).profile is None


# ---- DLA ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", (V85, V86, V103, "10.7.0"))
def test_dla_below_10_8(version):
    p = plan(version, precision="fp16", dla_core=1)
    assert p.dla_core == 1 and p.builder_flags == ("FP16", "PREFER_PRECISION_CONSTRAINTS", "GPU_FALLBACK")
    assert p.precision_constraints == "prefer"  # as Polygraphy's CreateConfig(use_dla=True) does below 11
    assert "GPU_FALLBACK" not in plan(version, precision="fp16", dla_core=0, gpu_fallback=False).builder_flags
    e = plan(version, precision="int8", dla_core=0, calibrator="entropy", has_calib=True)
    assert e.use_implicit_calibrator and e.dla_core == 0


def test_dla_on_11_4_1():
    p = plan(V1141, precision="fp16", dla_core=0)
    assert p.dla_core == 0 and p.builder_flags == ("GPU_FALLBACK",) and p.onnx_needed == "fp16"
    assert plan(V1141, precision="int8", is_qdq=True, dla_core=0).onnx_needed == "qdq"


# ---- --keep-float: layer precisions on the implicit-calibrator and DLA routes ---------------

KEEP = ("/model.24/m.0/Conv", "/model.9/MatMul", "/model.24/m.0/Conv")


@pytest.mark.parametrize("version", WEAK)
def test_keep_float_on_the_implicit_calibrator_route(version):
    p = plan(version, precision="int8", calibrator="entropy", has_calib=True, keep_float=KEEP)
    assert p.layer_precisions == (("/model.24/m.0/Conv", "FLOAT"), ("/model.9/MatMul", "FLOAT"))  # deduplicated
    assert p.precision_constraints == "obey" and any("2 layers kept in FP32" in n for n in p.notes)
    half = plan(version, precision="int8", calibrator="minmax", has_calib=True, keep_float=KEEP, keep_float_fp16=True)
    assert {d for _, d in half.layer_precisions} == {"HALF"}


def test_keep_float_on_dla():
    p = plan(V85, precision="fp16", dla_core=0, keep_float=KEEP)
    assert {d for _, d in p.layer_precisions} == {"FLOAT"} and any("on the GPU" in n for n in p.notes)
    refused(V85, "DLA cannot", precision="fp16", dla_core=0, gpu_fallback=False, keep_float=KEEP)
    q = plan(V103, precision="int8", is_qdq=True, dla_core=0, keep_float=KEEP, keep_float_fp16=True)
    assert {d for _, d in q.layer_precisions} == {"HALF"}


@pytest.mark.parametrize(
    "version, kw",
    [
        (V114, dict(precision="int8", is_qdq=True)),  # strongly typed
        (V85, dict(precision="int8", is_qdq=True)),  # the Q/DQ ONNX already holds the float nodes
        (V85, dict(precision="fp16")),  # a GPU FP16 build
    ],
)
def test_keep_float_ignored_elsewhere_with_a_note(version, kw):
    p = plan(version, keep_float=KEEP, **kw)
    assert p.layer_precisions == () and any("--keep-float ignored" in n for n in p.notes)


def test_keep_float_fp16_alone_refused():
    refused(V85, "only chooses the precision of --keep-float", precision="int8", is_qdq=True, keep_float_fp16=True)


def test_targets_and_opset_limits():
    from clo_export.engine.plan import TARGETS, opset_limit, target_version

    assert [str(target_version(t)) for t in TARGETS] == ["8.5.2", "8.6.1", "10.3.0", "10.16.0", "11.4.1"]
    assert target_version("10.7.0") == TrtVersion(10, 7, 0)
    with pytest.raises(CloExportError, match="unknown --target"):
        target_version("9.x")
    assert [opset_limit(target_version(t)) for t in TARGETS] == [17, 17, 20, 24, 24]


def test_dla_qdq_from_10():
    assert plan(V103, precision="int8", is_qdq=True, dla_core=0).onnx_needed == "qdq"


@pytest.mark.parametrize("version", ("10.8.0", V1012, V110, V114))
def test_dla_refused_10_8_to_11_4_0(version):
    refused(
        version,
        r"DLA unsupported in this TensorRT .*JetPack 5/6 TensorRT 8\.5/10\.3 or 11\.4\.1\+ on AGX Orin",
        precision="fp16",
        dla_core=0,
    )


@pytest.mark.parametrize("version", (V85, V86))
def test_dla_qdq_refused_on_8(version):
    msg = "DLA on JetPack 5 .* does not take Q/DQ; use --calibrator entropy"
    refused(version, msg, precision="int8", is_qdq=True, dla_core=0)
    refused(version, msg, precision="int8", has_calib=True, dla_core=0)


def test_dla_refuses_fp32_and_dynamic_batch():
    refused(V85, "DLA runs FP16 or INT8 only", dla_core=0)
    refused(V103, "DLA needs a fixed batch", precision="fp16", dla_core=0, dynamic_batch=True, batch_range=(1, 2, 4))
    refused(V103, "DLA needs a fixed batch", precision="fp16", dla_core=0, dynamic_batch=True)
    p = plan(V103, precision="fp16", dla_core=0, dynamic_batch=True, batch_range=(2, 2, 2))
    assert p.profile.min == p.profile.max == (2, 3, 640, 640)


# ---- refused combinations -----------------------------------------------------------------


@pytest.mark.parametrize("version", STRONG)
@pytest.mark.parametrize("calibrator", ("entropy", "minmax"))
def test_implicit_calibrators_refused_on_11(version, calibrator):
    refused(
        version,
        "removed in TensorRT 11; use the default --calibrator qdq",
        precision="int8",
        calibrator=calibrator,
        has_calib=True,
    )


def test_implicit_calibrator_refusals():
    refused(
        V103,
        "needs a weakly typed network",
        precision="int8",
        calibrator="entropy",
        has_calib=True,
        strongly_typed=True,
    )
    refused(
        V85,
        "calibrates the FP32 ONNX, not a Q/DQ ONNX",
        precision="int8",
        calibrator="entropy",
        is_qdq=True,
        has_calib=True,
    )
    refused(
        V85,
        "calibrates the FP32 ONNX, not the FP16 ONNX",
        precision="int8",
        calibrator="minmax",
        is_fp16=True,
        has_calib=True,
    )
    refused(V86, "needs calibration images or a cache; add --calib DIR", precision="int8", calibrator="entropy")
    refused(V86, "only applies to --int8", precision="fp16", calibrator="entropy")


@pytest.mark.parametrize("version", [*WEAK, *STRONG])
def test_int8_without_qdq_or_calib_refused(version):
    with pytest.raises(CloExportError, match="clo-export quantize MODEL.onnx --calib DIR") as e:
        plan(version, precision="int8")
    assert ("--calibrator entropy" in str(e.value)) == (version in WEAK)


@pytest.mark.parametrize("version", (V85, V114))
def test_batch_range_on_static_onnx_refused(version):
    refused(
        version,
        "--batch-range needs a dynamic-batch ONNX; re-export with clo-export onnx --dynamic",
        batch_range=(1, 2, 4),
    )


@pytest.mark.parametrize("version", ("8.4.3", "8.2.1", "7.1.3"))
def test_old_versions_refused(version):
    refused(version, r"TensorRT .* is not supported; use TensorRT 8\.5 or newer")


def test_onnx_kind_mismatch_refused():
    refused(V103, r"holds Q/DQ \(INT8\) nodes; build it with --int8", precision="fp16", is_qdq=True)
    refused(V114, "this ONNX is FP16; build it with --fp16", is_fp16=True)
    refused(V114, "not the FP16 ONNX", precision="int8", is_fp16=True, has_calib=True)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(precision="bf16"), "unknown precision"),
        (dict(precision="int8", calibrator="legacy"), "unknown calibrator"),
        (dict(dynamic_batch=True, batch_range=(4, 2, 8)), "MIN <= OPT <= MAX"),
        (dict(workspace_gb=0), "positive number of GiB"),
        (dict(precision="fp16", dla_core=-1), "--dla-core -1"),
    ],
)
def test_bad_values_refused(kw, match):
    refused(V103, match, **kw)


def test_plan_is_frozen():
    p = plan(V103)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.precision = "fp16"  # type: ignore[misc]


# ---- sidecar ------------------------------------------------------------------------------


def _sidecar(**kw) -> EngineSidecar:
    base = dict(
        tensorrt_version="10.3.0",
        gpu_name="Orin",
        compute_capability=(8, 7),
        precision="fp16",
        input_name="images",
        input_shape=(1, 3, 640, 640),
        output_names=("output0",),
        names=("person", "car"),
        stride=32,
        imgsz=(640, 640),
        source_onnx="best.onnx",
        source_onnx_sha256="ab" * 32,
        build_seconds=12.5,
    )
    return EngineSidecar(**{**base, **kw})


def test_sidecar_round_trip(tmp_path):
    engine = tmp_path / "best.engine"
    engine.write_bytes(b"plan")
    sc = _sidecar(profile=((1, 3, 640, 640), (2, 3, 640, 640), (4, 3, 640, 640)))
    path = sc.write(engine)
    assert path == sidecar_path(engine) == tmp_path / "best.engine.json"
    assert engine.read_bytes() == b"plan"  # the engine file is never touched
    assert EngineSidecar.read(engine) == sc
    assert json.loads(path.read_text())["compute_capability"] == [8, 7]


def test_sidecar_missing_or_broken(tmp_path):
    engine = tmp_path / "x.engine"
    with pytest.raises(CloExportError, match="missing.*rebuild it with: clo-export trt"):
        EngineSidecar.read(engine)
    sidecar_path(engine).write_text("{not json")
    with pytest.raises(CloExportError, match="cannot read"):
        EngineSidecar.read(engine)
    sidecar_path(engine).write_text(json.dumps({"tensorrt_version": "10.3.0"}))
    with pytest.raises(CloExportError, match="lacks .*gpu_name"):
        EngineSidecar.read(engine)


def test_an_engine_sidecar_from_before_still_loads_and_a_foreign_one_is_kept(tmp_path):
    engine = tmp_path / "best.engine"
    old = {
        "tensorrt_version": "8.5.2",
        "gpu_name": "Xavier",
        "compute_capability": [7, 2],
        "precision": "int8",
        "input_name": "images",
        "input_shape": [1, 3, 640, 640],
        "output_names": ["output0"],
        "names": ["person"],
        "stride": 32,
        "imgsz": [640, 640],
        "source_onnx": "best.int8.onnx",
        "source_onnx_sha256": "cd" * 32,
        "build_seconds": 300.0,
        "profile": None,
        "clo_export_version": "0.1.0",
        "schema": 1,
    }
    sidecar_path(engine).write_text(
        json.dumps(old, indent=2) + "\n"
    )  # as clo-export 0.1.0 wrote it (asdict, no marker first)
    side = EngineSidecar.read(engine)
    assert side.compute_capability == (7, 2) and side.rebuild_command() == "clo-export trt best.int8.onnx --int8"
    side.write(engine)  # it carries the marker key: replaced, every fact kept (no engine check on record: null)
    assert json.loads(sidecar_path(engine).read_text()) == {**old, "parity": None}
    sidecar_path(engine).write_text('{"notes": "mine"}\n')
    with pytest.raises(CloExportError, match="was not written by clo-export"):
        side.write(engine)
    assert sidecar_path(engine).read_text() == '{"notes": "mine"}\n'


def test_check_compatible():
    sc = _sidecar()
    assert check_compatible(sc, "10.3.0.26", "Orin", (8, 7)) == []
    assert "same sm_87" in check_compatible(sc, "10.3.0", "Orin NX", (8, 7))[0]


@pytest.mark.parametrize("trt, gpu, cc", [("10.7.0", "Orin", (8, 7)), ("10.3.0", "NVIDIA RTX 4090", (8, 9))])
def test_check_compatible_mismatch(trt, gpu, cc):
    with pytest.raises(CloExportError) as e:
        check_compatible(_sidecar(), trt, gpu, cc)
    assert str(e.value) == (
        f"engine built with TensorRT 10.3.0 on GPU Orin (sm_87); this is TensorRT {trt} on GPU {gpu} "
        f"(sm_{cc[0]}{cc[1]}) — rebuild it here with: clo-export trt best.onnx --fp16"
    )
