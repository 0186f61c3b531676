"""Decide how to build a TensorRT engine for one TensorRT version: pure, no tensorrt import.

Every version-dependent choice lives here, driven by `GATES` (feature -> the version that
introduced it and the one that removed it). `build.py` only applies the resulting BuildPlan.

Strong typing: TensorRT 11 is always strongly typed (precision comes from the ONNX: FP16
ONNX for fp16, Q/DQ ONNX for int8). On 10.x it is opt-in (`BuildRequest.strongly_typed`,
the CLI's --strongly-typed): then the same ONNX variants are used and no precision builder
flags are set; otherwise 10.x builds like 8.x with FP16/INT8 flags (deprecated from 10.12,
noted in `BuildPlan.notes`). Weakly typed fp16/int8 builds pin every Softmax to FP32 through
layer precision (the attention softmax overflows in FP16).

Layers to keep in float (`BuildRequest.keep_float`, the "float_nodes" of `clo-export quantize`'s
report) become per-layer precisions on the routes where TensorRT decides precision per layer:
the implicit calibrator (TensorRT < 11, INT8 from the FP32 ONNX) and DLA. `build.py` applies the
plan through Polygraphy's loaders; `TARGETS` names the versions `clo-export trt --dry-run` knows.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from clo_export.engine.version import TrtVersion
from clo_export.errors import CloExportError

Precision = Literal["fp32", "fp16", "int8"]
Calibrator = Literal["qdq", "entropy", "minmax"]
OnnxKind = Literal["fp32", "fp16", "qdq"]

_V = TrtVersion
# feature -> (introduced, removed or None). The only place TensorRT version numbers live.
GATES: dict[str, tuple[TrtVersion, TrtVersion | None]] = {
    "supported": (_V(8, 5), None),
    "explicit_batch_flag": (_V(8, 5), _V(10, 0)),  # required below 10, ignored in 10, gone in 11
    "strongly_typed_opt_in": (_V(10, 0), _V(11, 0)),  # NetworkDefinitionCreationFlag.STRONGLY_TYPED
    "always_strongly_typed": (_V(11, 0), None),  # the flag is ignored (deprecated) in 11
    "weak_typing": (_V(8, 5), _V(11, 0)),  # BuilderFlag FP16/INT8, layer precision, OBEY_PRECISION_CONSTRAINTS
    "weak_typing_deprecated": (_V(10, 12), _V(11, 0)),
    "implicit_calibrators": (_V(8, 5), _V(11, 0)),  # IInt8EntropyCalibrator2 / IInt8MinMaxCalibrator
    "implicit_calibrators_deprecated": (_V(10, 1), _V(11, 0)),
    "dla": (_V(8, 5), _V(10, 8)),  # JetPack 5/6; 10.7 was the last 10.x with DLA
    "dla_11": (_V(11, 4, 1), None),  # AGX Orin, JetPack 7.2.2+
    "dla_qdq": (_V(10, 0), None),  # DLA on JetPack 5 (8.x) does not take Q/DQ
}

# The opset each TensorRT's ONNX parser documents as its newest (onnx-tensorrt docs/operators.md):
# 8.5/8.6 "up to Opset 17", 10.0 "up to 20", 10.15 and 11.2 "opset 9 to opset 24". Versions in
# between get the older, verified limit.
OPSET_LIMITS: tuple[tuple[TrtVersion, int], ...] = ((_V(8, 5), 17), (_V(10, 0), 20), (_V(10, 15), 24))

# --target names for the dry run -> the version whose gates they stand for
TARGETS: dict[str, TrtVersion] = {
    "8.5": _V(8, 5, 2),  # JetPack 5.1
    "8.6": _V(8, 6, 1),
    "10.3": _V(10, 3, 0),  # JetPack 6
    "10.x": _V(10, 16, 0),  # newest 10.x (DeepStream 8/9 range); no DLA, weak typing deprecated
    "11.x": _V(11, 4, 1),  # JetPack 7; DLA on AGX Orin from 11.4.1
}

SUPPORTED_SERIES = ((_V(8, 5, 0), _V(8, 7, 0)), (_V(10, 0, 0), _V(12, 0, 0)))  # TensorRT 9 was never a general release

CALIBRATOR_CLASSES: dict[str, str] = {"entropy": "IInt8EntropyCalibrator2", "minmax": "IInt8MinMaxCalibrator"}


def opset_limit(version: TrtVersion) -> int:
    """The newest ONNX opset this TensorRT's parser is documented to take."""
    return max(limit for since, limit in OPSET_LIMITS if since <= version)


def target_version(target: str) -> TrtVersion:
    """A --target name (8.5, 8.6, 10.3, 10.x, 11.x) or an explicit version like 10.7.0."""
    if target in TARGETS:
        return TARGETS[target]
    refuse = CloExportError(
        f"unknown --target {target!r}: clo-export supports TensorRT 8.5, 8.6, 10.x and 11.x; "
        f"use one of {', '.join(TARGETS)} or a version in those series like 10.7.0"
    )
    if not re.fullmatch(r"\d+\.\d+(\.\d+){0,2}", target):
        raise refuse
    version = TrtVersion.parse(target)
    if not any(since <= version < until for since, until in SUPPORTED_SERIES):
        raise refuse
    return version


def has(version: TrtVersion, feature: str) -> bool:
    """True when `feature` exists in this TensorRT version according to GATES."""
    introduced, removed = GATES[feature]
    return introduced <= version and (removed is None or version < removed)


@dataclass(frozen=True)
class BuildRequest:
    """What the user asked for, plus what the input ONNX is (the CLI fills the is_* flags)."""

    precision: Precision = "fp32"
    calibrator: Calibrator = "qdq"
    is_qdq: bool = False  # the ONNX already holds QuantizeLinear/DequantizeLinear
    is_fp16: bool = False  # the ONNX is the FP16 variant (clo-export onnx --half)
    dynamic_batch: bool = False  # the ONNX input has a symbolic batch dimension
    batch_range: tuple[int, int, int] | None = None  # (min, opt, max) for the optimisation profile
    workspace_gb: float | None = None
    dla_core: int | None = None
    gpu_fallback: bool = True  # only used with dla_core
    timing_cache: str | None = None  # path, read if present and written after the build
    has_calib: bool = False  # --calib given (images or cache): the CLI can quantize / calibrate
    strongly_typed: bool = False  # opt-in on 10.x; always on for 11, refused below 10
    input_name: str = "images"
    input_shape: tuple[int, ...] = (1, 3, 640, 640)  # batch entry is replaced by the profile
    keep_float: tuple[str, ...] = ()  # ONNX node names to keep in float ("float_nodes" of a quantize report)
    keep_float_fp16: bool = False  # --int8 --fp16 --keep-float: those nodes in FP16 instead of FP32

    def validate(self) -> None:
        """Refuse values and combinations no TensorRT version could build, before any file is read."""
        check_request(self)


@dataclass(frozen=True)
class ProfileShape:
    """One optimisation-profile entry: IOptimizationProfile.set_shape(name, min, opt, max)."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class BuildPlan:
    """Exactly what build.py applies; names are TensorRT enum member names, resolved by getattr."""

    version: TrtVersion
    precision: Precision
    onnx_needed: OnnxKind  # which ONNX variant to build from
    needs_quantize: bool = False  # caller must make the Q/DQ ONNX from --calib first
    needs_fp16_onnx: bool = False  # caller must make the FP16 ONNX first
    explicit_batch_flag: bool = False
    strongly_typed: bool = False
    network_flags: tuple[str, ...] = ()  # NetworkDefinitionCreationFlag member names
    builder_flags: tuple[str, ...] = ()  # BuilderFlag member names
    use_implicit_calibrator: bool = False
    calibrator_class: str | None = None  # "IInt8EntropyCalibrator2" | "IInt8MinMaxCalibrator"
    softmax_fp32_via_layer_precision: bool = False
    workspace_bytes: int | None = None
    timing_cache: str | None = None
    profile: ProfileShape | None = None
    dla_core: int | None = None
    layer_precisions: tuple[tuple[str, str], ...] = ()  # (ONNX node / TensorRT layer name, DataType member)
    notes: tuple[str, ...] = field(default=())

    @property
    def precision_constraints(self) -> str | None:
        """Polygraphy's CreateConfig(precision_constraints=): "obey", "prefer" or None."""
        for flag, value in (("OBEY_PRECISION_CONSTRAINTS", "obey"), ("PREFER_PRECISION_CONSTRAINTS", "prefer")):
            if flag in self.builder_flags:
                return value
        return None


def make_plan(version: TrtVersion | str, request: BuildRequest) -> BuildPlan:
    """Validate `request` against `version` and return the plan; CloExportError names the fix."""
    v = TrtVersion.parse(version)
    request.validate()
    if not has(v, "supported"):
        raise CloExportError(f"TensorRT {v} is not supported; use TensorRT 8.5 or newer (JetPack 5+)")
    notes: list[str] = []
    strongly_typed = _strongly_typed(v, request)
    implicit = _implicit_calibrator(v, request, strongly_typed, notes)
    _check_onnx_kind(request)
    onnx_needed = _onnx_needed(request, strongly_typed, implicit)
    if request.dla_core is not None:
        _check_dla(v, request, onnx_needed)
    needs_quantize = onnx_needed == "qdq" and not request.is_qdq
    if needs_quantize and not request.has_calib:
        alt = "" if has(v, "always_strongly_typed") else " (or --calibrator entropy)"
        raise CloExportError(
            "--int8 needs a Q/DQ ONNX: run clo-export quantize MODEL.onnx --calib DIR first, "
            f"or add --calib DIR to quantize now{alt}"
        )
    needs_fp16_onnx = onnx_needed == "fp16" and not request.is_fp16
    weak = not strongly_typed and request.precision != "fp32"
    builder_flags = _builder_flags(request, weak)
    layer_precisions = _layer_precisions(v, request, implicit, weak, notes)
    network_flags = tuple(
        name
        for name, on in (
            ("EXPLICIT_BATCH", has(v, "explicit_batch_flag")),
            ("STRONGLY_TYPED", strongly_typed and has(v, "strongly_typed_opt_in")),
        )
        if on
    )
    if weak:
        notes.append(
            f"Softmax layers pinned to FP32 via layer precision "
            f"({next(f for f in builder_flags if f.endswith('PRECISION_CONSTRAINTS'))})"
        )
        if has(v, "weak_typing_deprecated"):
            notes.append(
                f"TensorRT {v} deprecates FP16/INT8 builder flags and layer precision; "
                "--strongly-typed with the FP16/Q-DQ ONNX is the path that keeps working on 11"
            )
    if strongly_typed:
        notes.append(f"strongly typed: precision comes from the {onnx_needed.upper()} ONNX, no precision flags")
    if needs_quantize:
        notes.append("the FP32 ONNX will be quantized to Q/DQ with --calib before building")
    if needs_fp16_onnx:
        notes.append("the FP16 ONNX (clo-export onnx --half) will be made before building")
    return BuildPlan(
        version=v,
        precision=request.precision,
        onnx_needed=onnx_needed,
        needs_quantize=needs_quantize,
        needs_fp16_onnx=needs_fp16_onnx,
        explicit_batch_flag=has(v, "explicit_batch_flag"),
        strongly_typed=strongly_typed,
        network_flags=network_flags,
        builder_flags=builder_flags,
        use_implicit_calibrator=implicit,
        calibrator_class=CALIBRATOR_CLASSES[request.calibrator] if implicit else None,
        softmax_fp32_via_layer_precision=weak,
        workspace_bytes=int(request.workspace_gb * (1 << 30)) if request.workspace_gb else None,
        timing_cache=request.timing_cache,
        profile=_profile(request, notes),
        dla_core=request.dla_core,
        layer_precisions=layer_precisions,
        notes=tuple(notes),
    )


def check_batch_range(batch_range: tuple[int, int, int]) -> None:
    """A profile's (MIN, OPT, MAX) batch must be ordered and at least 1."""
    lo, opt, hi = batch_range
    if not 1 <= lo <= opt <= hi:
        raise CloExportError(f"--batch-range {lo},{opt},{hi} must satisfy 1 <= MIN <= OPT <= MAX")


def check_request(r: BuildRequest) -> None:
    """``BuildRequest.validate``: the one place for these checks (messages name clo-export trt's flags)."""
    if r.precision not in ("fp32", "fp16", "int8"):
        raise CloExportError(f"unknown precision {r.precision!r}; use fp32, fp16 or int8")
    if r.calibrator not in CALIBRATOR_CLASSES and r.calibrator != "qdq":
        raise CloExportError(f"unknown calibrator {r.calibrator!r}; use qdq, entropy or minmax")
    if r.keep_float_fp16 and not (r.keep_float and r.precision == "int8"):
        raise CloExportError(
            "--fp16 together with --int8 only chooses the precision of --keep-float layers: choose one of --fp16 or "
            "--int8 (an INT8 engine already runs its float layers in FP16), or add --keep-float FILE"
        )
    if r.calibrator != "qdq" and r.precision != "int8":
        raise CloExportError(f"--calibrator {r.calibrator} only applies to --int8; add --int8 or drop --calibrator")
    if r.has_calib and r.precision != "int8":
        raise CloExportError("--calib is for --int8 builds; add --int8 or drop --calib")
    if r.batch_range is not None:
        check_batch_range(r.batch_range)
    if r.workspace_gb is not None and not (math.isfinite(r.workspace_gb) and r.workspace_gb > 0):
        raise CloExportError(f"--workspace {r.workspace_gb} must be a positive number of GiB")
    if r.dla_core is not None and r.dla_core < 0:
        raise CloExportError(f"--dla-core {r.dla_core} must be 0 or 1 (the Orin DLA cores)")
    if r.dla_core is None and not r.gpu_fallback:
        raise CloExportError("--gpu-fallback/--no-gpu-fallback only apply with --dla-core N")
    if r.timing_cache is not None and Path(r.timing_cache).is_dir():
        raise CloExportError(
            f"--timing-cache {r.timing_cache} is a folder; give a file path (it is created if missing)"
        )


def _strongly_typed(v: TrtVersion, r: BuildRequest) -> bool:
    """Always on 11, opt-in on 10.x, unavailable before 10."""
    if has(v, "always_strongly_typed"):
        return True
    if r.strongly_typed and not has(v, "strongly_typed_opt_in"):
        raise CloExportError(f"--strongly-typed needs TensorRT 10 or newer; drop it on TensorRT {v}")
    return r.strongly_typed


def _implicit_calibrator(v: TrtVersion, r: BuildRequest, strongly_typed: bool, notes: list[str]) -> bool:
    """True for --int8 --calibrator entropy|minmax, after checking this version and ONNX allow it."""
    if r.precision != "int8" or r.calibrator == "qdq":
        return False
    c = r.calibrator
    if not has(v, "implicit_calibrators"):
        raise CloExportError(
            f"--calibrator {c}: implicit INT8 calibrators were removed in TensorRT 11; use the default --calibrator qdq"
        )
    if strongly_typed:
        raise CloExportError(
            f"--calibrator {c} needs a weakly typed network; drop --strongly-typed or use --calibrator qdq"
        )
    if r.is_qdq or r.is_fp16:
        kind = "a Q/DQ" if r.is_qdq else "the FP16"
        raise CloExportError(
            f"--calibrator {c} calibrates the FP32 ONNX, not {kind} ONNX; pass the FP32 ONNX or use --calibrator qdq"
        )
    if not r.has_calib:
        raise CloExportError(f"--calibrator {c} needs calibration images or a cache; add --calib DIR")
    if has(v, "implicit_calibrators_deprecated"):
        notes.append(f"{CALIBRATOR_CLASSES[c]} is deprecated in TensorRT {v}; --calibrator qdq is the lasting route")
    return True


def _check_onnx_kind(r: BuildRequest) -> None:
    """The ONNX variant must be one this precision can start from."""
    if r.is_qdq and r.precision != "int8":
        raise CloExportError(
            f"this ONNX holds Q/DQ (INT8) nodes; build it with --int8, or pass the FP32 ONNX for --{r.precision}"
        )
    if r.is_fp16 and r.precision == "fp32":
        raise CloExportError("this ONNX is FP16; build it with --fp16, or pass the FP32 ONNX for an FP32 engine")
    if r.is_fp16 and r.precision == "int8" and not r.is_qdq:
        raise CloExportError(
            "--int8 starts from the FP32 ONNX or its Q/DQ version (clo-export quantize), "
            "not the FP16 ONNX; pass the FP32 ONNX"
        )


def _onnx_needed(r: BuildRequest, strongly_typed: bool, implicit: bool) -> OnnxKind:
    """Which ONNX variant carries the requested precision for this build."""
    if r.precision == "int8":
        return "fp32" if implicit else "qdq"
    if r.precision == "fp16" and (strongly_typed or r.is_fp16):
        return "fp16"
    return "fp32"


def _check_dla(v: TrtVersion, r: BuildRequest, onnx_needed: OnnxKind) -> None:
    """DLA exists in this version, runs FP16/INT8 only, takes Q/DQ only from 10.x, needs fixed shapes."""
    if not (has(v, "dla") or has(v, "dla_11")):
        raise CloExportError(
            f"DLA unsupported in this TensorRT ({v}); use JetPack 5/6 TensorRT 8.5/10.3 or 11.4.1+ on AGX Orin"
        )
    if r.precision == "fp32":
        raise CloExportError("DLA runs FP16 or INT8 only; add --fp16 or --int8, or drop --dla-core")
    if onnx_needed == "qdq" and not has(v, "dla_qdq"):
        raise CloExportError(
            f"DLA on JetPack 5 (TensorRT {v}) does not take Q/DQ; use --calibrator entropy "
            "with the FP32 ONNX and --calib DIR"
        )
    if r.dynamic_batch and (r.batch_range is None or len(set(r.batch_range)) != 1):
        raise CloExportError("DLA needs a fixed batch; pass --batch-range N,N,N (MIN = OPT = MAX) or a static ONNX")


def _builder_flags(r: BuildRequest, weak: bool) -> tuple[str, ...]:
    """BuilderFlag names: precision flags only for weakly typed builds; GPU_FALLBACK only with DLA."""
    flags: list[str] = []
    if weak:
        flags += ["FP16", "INT8"] if r.precision == "int8" else ["FP16"]
        # DLA builds prefer (Polygraphy's CreateConfig(use_dla=True) sets PREFER below 11 too):
        # a layer DLA cannot run at the pinned precision falls back instead of failing the build
        flags.append("PREFER_PRECISION_CONSTRAINTS" if r.dla_core is not None else "OBEY_PRECISION_CONSTRAINTS")
    if r.dla_core is not None and r.gpu_fallback:
        flags.append("GPU_FALLBACK")
    return tuple(flags)


def _layer_precisions(
    v: TrtVersion, r: BuildRequest, implicit: bool, weak: bool, notes: list[str]
) -> tuple[tuple[str, str], ...]:
    """--keep-float nodes as per-layer precisions, where this route lets TensorRT pick precision per layer."""
    if not r.keep_float:
        return ()
    if not weak or not (implicit or r.dla_core is not None):
        why = (
            f"TensorRT {v} builds strongly typed, so precision comes from the ONNX"
            if not weak
            else "the Q/DQ ONNX already leaves those nodes unquantized"
            if r.precision == "int8"
            else f"an {r.precision.upper()} GPU build has no INT8 layers to keep out"
        )
        notes.append(f"--keep-float ignored: {why} (it applies to --calibrator entropy|minmax and --dla-core builds)")
        return ()
    half = r.keep_float_fp16 and r.precision == "int8"
    if not half and r.dla_core is not None and not r.gpu_fallback:
        raise CloExportError(
            "--keep-float layers run in FP32, which DLA cannot; allow --gpu-fallback, or add --fp16 "
            "to keep them in FP16 on the DLA"
        )
    dtype = "HALF" if half else "FLOAT"
    names = tuple(dict.fromkeys(r.keep_float))
    notes.append(
        f"{len(names)} layers kept in {'FP16' if half else 'FP32'} (--keep-float)"
        + (", on the GPU (DLA runs no FP32)" if r.dla_core is not None and not half else "")
    )
    return tuple((name, dtype) for name in names)


def _profile(r: BuildRequest, notes: list[str]) -> ProfileShape | None:
    """Optimisation profile for a dynamic-batch ONNX; a batch range on a static ONNX is an error."""
    if not r.dynamic_batch:
        if r.batch_range is not None:
            raise CloExportError(
                "--batch-range needs a dynamic-batch ONNX; re-export with clo-export onnx --dynamic-batch "
                "or drop --batch-range"
            )
        return None
    if r.batch_range is None:
        notes.append(
            "dynamic-batch ONNX without --batch-range: profile fixed at batch 1 (pass --batch-range MIN,OPT,MAX)"
        )
    lo, opt, hi = r.batch_range or (1, 1, 1)
    rest = tuple(r.input_shape[1:])
    return ProfileShape(r.input_name, (lo, *rest), (opt, *rest), (hi, *rest))
