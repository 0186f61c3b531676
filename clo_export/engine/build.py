"""Build a TensorRT engine from an ONNX: the library step beside ``export_onnx`` and ``quantize``.

``build_engine(onnx, request)`` reads the ONNX, asks ``plan.make_plan`` (pure, every version
decision) what to do for the installed TensorRT, makes the ONNX variant the plan needs (Q/DQ from
calibration images, FP16), runs the pre-flight check on it, and applies the plan through
Polygraphy's loaders (``NetworkFromOnnxPath`` → network post-processing → ``CreateConfig`` →
``EngineBytesFromNetwork``). It returns an :class:`EngineBuild`: engine path, sidecar, plan.
``dry_run(onnx, request, target)`` does everything up to TensorRT for any version, on any machine.

Convention, checked by tests/test_trt_api.py against the API lists of each TensorRT release:
TensorRT names that only some plans need are used only inside functions named
``_when_<plan field>`` (optionally ``__<suffix>``), each called only under ``if plan.<field>``;
every other TensorRT name here is used by every plan. Polygraphy names are checked against the
installed Polygraphy (pyproject's floor).
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from clo_export.artifacts import load_onnx
from clo_export.backends.base import Runner
from clo_export.engine.check import NOT_CHECKED, EngineCheck, check_engine, failed_to_run
from clo_export.engine.onnx_facts import OnnxFacts, default_engine_path, make_fp16_onnx, onnx_facts, with_facts
from clo_export.engine.plan import BuildPlan, BuildRequest, make_plan, target_version
from clo_export.engine.preflight import Problem, check_onnx, dla_gpu_nodes
from clo_export.engine.sidecar import EngineSidecar
from clo_export.errors import CloExportError
from clo_export.fileio import atomic_path, check_artifact, is_stream
from clo_export.lazy import lazy_import

log = logging.getLogger(__name__)
CALIB_CACHE_SUFFIXES = (".cache", ".calib", ".bin")


class PreflightError(CloExportError):
    """The ONNX breaks rules of the TensorRT version it is built for; ``problems`` lists each."""

    def __init__(self, version: Any, problems: Sequence[Problem]):
        self.problems = tuple(problems)
        first = str(self.problems[0]) if self.problems else ""
        more = f" (and {len(self.problems) - 1} more)" if len(self.problems) > 1 else ""
        super().__init__(
            f"pre-flight check for TensorRT {version} failed: {first}{more}; "
            "see clo-export trt MODEL --dry-run for every problem"
        )


@dataclass(frozen=True)
class DryRun:
    """What a build would do and what stands in its way; truthy when there are no problems."""

    plan: BuildPlan
    facts: OnnxFacts
    problems: tuple[Problem, ...]
    gpu_layers: tuple[str, ...] = ()  # with DLA: nodes that fall back to the GPU

    def __bool__(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class EngineBuild:
    """What ``build_engine`` produced."""

    engine_path: Path
    sidecar: EngineSidecar
    plan: BuildPlan
    source_onnx: Path  # the ONNX TensorRT parsed (the given one, or its Q/DQ / FP16 variant made now)
    engine_bytes: int
    build_seconds: float
    calibration_cache: Optional[Path] = None
    check: Optional[EngineCheck] = None  # the engine against the FP32 ONNX (None with check=False)

    def __bool__(self) -> bool:
        """False when the engine failed its check (it is written all the same, marked failed in its sidecar)."""
        return self.check is None or bool(self.check)


def dry_run(
    onnx_path: str | Path, request: BuildRequest = BuildRequest(), target: str | None = None, calib: Sequence[str] = ()
) -> DryRun:
    """Plan and pre-flight check for TensorRT ``target`` (default: the installed one); needs no TensorRT."""
    replace(request, has_calib=bool(calib) or request.has_calib).validate()
    path = Path(onnx_path)
    model = load_onnx(_existing(path), load_external_data=False)
    facts = onnx_facts(model, path.name)
    version = target_version(target) if target else _installed_version()
    plan = make_plan(version, with_facts(request, facts, calib))
    gpu = tuple(n.name or n.op_type for n in dla_gpu_nodes(model.graph.node)) if plan.dla_core is not None else ()
    return DryRun(plan, facts, tuple(check_onnx(model, plan)), gpu)


def build_engine(
    onnx_path: str | Path,
    request: BuildRequest = BuildRequest(),
    output: str | Path | None = None,
    *,
    calib: Sequence[str] = (),
    num: int = 256,
    min_agreement: Optional[float] = None,
    verbose: bool = False,
    progress: Callable[[str], None] | None = None,
    check: bool = True,
    engine_runner: Callable[[Path], Runner] | None = None,
) -> EngineBuild:
    """Build ``onnx_path`` for the installed TensorRT as ``request`` asks; write the engine and its sidecar.

    With ``check`` the engine then runs against ONNX Runtime on the FP32 ONNX (engine/check.py; ``engine_runner``
    replaces the TensorRT runner that loads it) and the sidecar records the result; a failed engine is kept,
    marked failed, and the returned EngineBuild is falsy. An ONNX quantized on the way (``calib``) passes
    ``clo_export.quantize``'s accuracy gate (``min_agreement``, as ``QuantizeOptions``) or nothing is built.
    """
    replace(request, has_calib=bool(calib) or request.has_calib).validate()  # before any file is read
    path = _existing(Path(onnx_path))
    facts = onnx_facts(load_onnx(path, load_external_data=False), path.name)
    trt = lazy_import("tensorrt")
    plan = make_plan(str(trt.__version__), with_facts(request, facts, calib))
    if min_agreement is not None and not plan.needs_quantize:
        raise CloExportError(
            "--min-agreement checks the INT8 model quantized from --calib images; use it with --int8 --calib IMAGES "
            "(the Q/DQ route), or check an existing .int8.onnx with clo-export quantize"
        )
    out = Path(output) if output else default_engine_path(path, plan.precision)
    if out.resolve() == path.resolve():
        raise CloExportError(f"the engine path {out} would overwrite the ONNX; pick another output path")
    check_artifact({"MODEL": path, "--calib": list(calib), "--timing-cache": request.timing_cache}, out)
    stage = progress or (lambda _name: None)
    stage("prepare")
    source = _source_onnx(plan, path, facts, calib, num, min_agreement)
    problems = check_onnx(load_onnx(source, load_external_data=False), plan)
    if problems:
        raise PreflightError(plan.version, problems)
    from clo_export.engine.gpu import gpu_identity

    gpu_name, capability = gpu_identity(0)
    calibrator, cache = _calibrator(plan, facts, calib, num, out) if plan.use_implicit_calibrator else (None, None)
    stage("build")
    quiet_polygraphy(verbose)
    start = time.perf_counter()
    data = bytes(_engine_bytes(trt, plan, source, calibrator))
    seconds = time.perf_counter() - start
    stage("write")
    with atomic_path(out) as tmp:
        tmp.write_bytes(data)
    if calibrator is not None:
        from clo_export.quantization.trt_calibrator import save_cache

        save_cache(calibrator, cache)
    sidecar = _sidecar(str(trt.__version__), gpu_name, capability, plan, facts, path, seconds)
    result = None
    if check and not is_stream(out):  # an engine sent to a device or pipe cannot be read back to check
        stage("check")
        sidecar.write(out)  # the engine's runner reads it
        batch = plan.profile.opt[0] if plan.profile else max(1, facts.input_shape[0])
        try:
            result = check_engine(out, path, facts, plan.precision, batch, calib, engine_runner)
        except CloExportError as e:
            replace(sidecar, parity=failed_to_run(e)).write(out)
            raise
    sidecar = replace(sidecar, parity=result.to_dict() if result is not None else NOT_CHECKED)
    sidecar.write(out)
    return EngineBuild(out, sidecar, plan, source, len(data), seconds, cache, result)  # out may be a device: no stat


def quiet_polygraphy(verbose: bool = False) -> None:
    """Polygraphy (and the TensorRT log it relays) at WARNING, or VERBOSE with --verbose."""
    from polygraphy.logger import G_LOGGER

    G_LOGGER.module_severity = G_LOGGER.VERBOSE if verbose else G_LOGGER.WARNING


def _existing(path: Path) -> Path:
    """The ONNX to build from: an existing regular .onnx file."""
    from clo_export.validate import existing_file

    existing_file("MODEL", path, "export one with: clo-export onnx best.pt")
    if path.suffix.lower() != ".onnx":
        raise CloExportError(
            f"'{path.name}' is not an ONNX file; TensorRT engines are built from the .onnx that "
            "clo-export onnx (or quantize) wrote"
        )
    return path


def _installed_version() -> Any:
    try:
        return str(lazy_import("tensorrt").__version__)
    except CloExportError:
        raise CloExportError(
            "TensorRT is not installed here, so name the version to check against: --target 8.5|8.6|10.3|10.x|11.x"
        ) from None


def _source_onnx(
    plan: BuildPlan, path: Path, facts: OnnxFacts, calib: Sequence[str], num: int, min_agreement: Optional[float]
) -> Path:
    """The ONNX the plan builds from: the given one, or its Q/DQ (through quantize's accuracy gate) / FP16 variant."""
    if plan.needs_quantize:
        if sys.version_info < (3, 10):
            raise CloExportError(
                "quantizing to Q/DQ is an export step and needs Python >= 3.10; run clo-export quantize "
                f"{path.name} --calib DIR on the workstation and pass the .int8.onnx here"
            )
        from clo_export.quantization.quantize import QuantizeOptions, quantize

        result = quantize(path, list(calib), None, QuantizeOptions(num=num, min_agreement=min_agreement))
        r, gate = result.report, result.report.info["gate"]
        if r.score is None:
            log.info(
                "quantized %s: INT8 accuracy not measured (%s), gate not checked", result.path.name, r.not_measured
            )
        else:
            log.info(
                "quantized %s: INT8 keeps %.4f of FP32's mAP@.5:.95 on %d held-out images (--min-agreement %g: %s; "
                "details: clo-export quantize)",
                result.path.name,
                r.score,
                r.n_images,
                gate["min_agreement"],
                gate["outcome"],
            )
        return result.path
    if plan.needs_fp16_onnx:
        out = make_fp16_onnx(path, facts)
        log.info("made %s (FP16, softmax kept FP32) for the strongly typed build", out.name)
        return out
    return path


def _calibrator(plan: BuildPlan, facts: OnnxFacts, calib: Sequence[str], num: int, out: Path) -> tuple[Any, Path]:
    """Polygraphy's calibrator over our calibration feeds (or only a cache file), and the cache path."""
    from clo_export.quantization.calibset import CalibrationData, split_sources
    from clo_export.quantization.trt_calibrator import make_calibrator

    method = "minmax" if plan.calibrator_class == "IInt8MinMaxCalibrator" else "entropy"
    if len(calib) == 1 and Path(calib[0]).suffix.lower() in CALIB_CACHE_SUFFIXES:
        cache = Path(calib[0])
        if not cache.is_file():
            raise CloExportError(f"calibration cache {cache} does not exist; pass calibration images with --calib DIR")
        return make_calibrator([], method, cache), cache
    batch = plan.profile.opt[0] if plan.profile else max(1, facts.input_shape[0])
    data = CalibrationData(split_sources(list(calib), num, 0).calib, facts.imgsz, facts.input_name, batch)
    cache = out.with_name(f"{out.stem}.{method}.cache")
    return make_calibrator(data, method, cache), cache


def _sidecar(
    version: str,
    gpu_name: str,
    capability: tuple[int, int],
    plan: BuildPlan,
    facts: OnnxFacts,
    model: Path,
    seconds: float,
) -> EngineSidecar:
    from clo_export.fileio import sha256_file

    names = facts.meta.names
    return EngineSidecar(
        tensorrt_version=version,
        gpu_name=gpu_name,
        compute_capability=tuple(capability),
        precision=plan.precision,
        input_name=facts.input_name,
        input_shape=tuple(facts.input_shape),
        output_names=facts.output_names,
        names=tuple(names.get(i, str(i)) for i in range(max(names, default=-1) + 1)),
        stride=int(facts.meta.stride),
        imgsz=tuple(facts.imgsz),
        source_onnx=model.name,
        source_onnx_sha256=sha256_file(model),
        build_seconds=round(seconds, 2),
        profile=(plan.profile.min, plan.profile.opt, plan.profile.max) if plan.profile else None,
    )


# ---- the TensorRT-facing part: the plan applied through Polygraphy --------------------------------


def _engine_bytes(trt: Any, plan: BuildPlan, onnx_path: Path, calibrator: Any) -> Any:
    """Parse, post-process the network, configure and build, exactly as ``plan`` says."""
    from polygraphy.backend.trt import CreateConfig, EngineBytesFromNetwork, NetworkFromOnnxPath, Profile
    from polygraphy.exception import PolygraphyException

    network: Any = NetworkFromOnnxPath(str(onnx_path), strongly_typed="STRONGLY_TYPED" in plan.network_flags)
    if plan.softmax_fp32_via_layer_precision:
        network = _when_softmax_fp32_via_layer_precision(trt, network)
    if plan.layer_precisions:
        network = _when_layer_precisions(trt, network, plan)
    profiles = None
    if plan.profile:
        p = plan.profile
        profiles = [Profile().add(p.name, min=p.min, opt=p.opt, max=p.max)]
    pools = None
    if plan.workspace_bytes:
        pools = _when_workspace_bytes(trt, plan)
    config: Any = CreateConfig(
        tf32=False,
        fp16="FP16" in plan.builder_flags,
        int8="INT8" in plan.builder_flags,
        calibrator=calibrator,
        precision_constraints=plan.precision_constraints,
        profiles=profiles,
        memory_pool_limits=pools,
        use_dla=plan.dla_core is not None,
        allow_gpu_fallback="GPU_FALLBACK" in plan.builder_flags,
        load_timing_cache=plan.timing_cache,
    )
    if plan.dla_core:
        config = _when_dla_core(config, plan)
    try:
        return EngineBytesFromNetwork(network, config, save_timing_cache=plan.timing_cache)()
    except PolygraphyException as e:
        first = next((line for line in str(e).splitlines() if line.strip()), "no details")
        raise CloExportError(
            f"TensorRT {trt.__version__} could not build the engine ({first}); rerun with --verbose for TensorRT's log"
        ) from None


def _when_softmax_fp32_via_layer_precision(trt: Any, network: Any) -> Any:
    """Pin every Softmax (the attention's) to FP32 compute and output in weakly typed FP16/INT8 builds."""
    from polygraphy.backend.trt import PostprocessNetwork

    def pin(network: Any) -> None:
        for layer in network:
            if layer.type == trt.LayerType.SOFTMAX:
                layer.precision = trt.DataType.FLOAT
                for j in range(layer.num_outputs):
                    layer.set_output_type(j, trt.DataType.FLOAT)

    return PostprocessNetwork(network, pin, name="softmax-fp32")


def _when_layer_precisions(trt: Any, network: Any, plan: BuildPlan) -> Any:
    """--keep-float layers (named as their ONNX nodes, as TensorRT's parser names layers) in FP32/FP16."""
    from polygraphy.backend.trt import SetLayerPrecisions

    return SetLayerPrecisions(network, {name: getattr(trt.DataType, dtype) for name, dtype in plan.layer_precisions})


def _when_workspace_bytes(trt: Any, plan: BuildPlan) -> dict:
    """Cap the builder's scratch memory."""
    return {trt.MemoryPoolType.WORKSPACE: plan.workspace_bytes}


def _when_dla_core(config: Any, plan: BuildPlan) -> Any:
    """CreateConfig(use_dla=True) picks DLA core 0; another core is set on the finished config."""
    from polygraphy.backend.trt import PostprocessConfig

    def core(builder: Any, network: Any, config: Any) -> None:
        config.DLA_core = plan.dla_core

    return PostprocessConfig(config, core)
