"""Build a TensorRT engine from ONNX by applying a BuildPlan; every decision was made in plan.py.

Convention, checked by tests/test_trt_api.py against the API lists of each TensorRT release:
TensorRT names that only some plans need are used only inside functions named
`_when_<plan field>` (optionally `__<suffix>`), each called only under `if plan.<field>`;
enum members the plan names (`network_flags`, `builder_flags`) are resolved with getattr.
Every other TensorRT name here is used by every plan, so it must exist in every version.
The engine file holds only TensorRT's serialized bytes; metadata goes to the sidecar.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from clo_export.engine.plan import BuildPlan
from clo_export.engine.version import TrtVersion
from clo_export.errors import CloExportError
from clo_export.fileio import atomic_path
from clo_export.lazy import lazy_import

log = logging.getLogger(__name__)
TRT_LOG = logging.getLogger("clo_export.tensorrt")
# ILogger.Severity values: INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4.
SEVERITY_LIMIT = {"error": 1, "warning": 2, "info": 3, "verbose": 4}
SEVERITY_TO_LOGGING = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO, 4: logging.DEBUG}


@dataclass(frozen=True)
class BuildInfo:
    """What a build produced, for the sidecar and the CLI summary."""

    engine_path: Path
    tensorrt_version: str
    build_seconds: float
    engine_bytes: int
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shape: tuple[int, ...]  # as the network declares it (-1 for a dynamic batch)
    network_layers: int | None = None  # layers of the parsed network, before TensorRT's fusions


def build_engine(
    onnx_path: str | Path,
    out_path: str | Path,
    plan: BuildPlan,
    *,
    calibrator: Any = None,
    log_level: str = "warning",
    progress: Callable[[str], None] | None = None,
) -> BuildInfo:
    """Parse `onnx_path`, configure the builder exactly as `plan` says, write the engine atomically."""
    if log_level not in SEVERITY_LIMIT:
        raise CloExportError(f"unknown log level {log_level!r}; use one of {', '.join(SEVERITY_LIMIT)}")
    if plan.use_implicit_calibrator and calibrator is None:
        raise CloExportError(f"this plan calibrates with {plan.calibrator_class}; pass calibrator= (the CLI makes "
                             "one from --calib DIR)")
    trt = lazy_import("tensorrt")
    running = TrtVersion.parse(trt.__version__)
    if running != plan.version:
        raise CloExportError(f"the build plan is for TensorRT {plan.version} but this is TensorRT {running}; "
                             "make the plan with the running version")
    stage = progress or (lambda _name: None)
    logger = make_logger(trt, log_level)
    builder = trt.Builder(logger)
    network_flags = 0
    for name in plan.network_flags:
        network_flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    network = builder.create_network(network_flags)
    parser = trt.OnnxParser(network, logger)
    stage("parse")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise CloExportError(f"TensorRT {running} cannot parse {onnx_path}: {errors}; "
                             "re-export with clo-export onnx (opset <= 17 for TensorRT 8.x)")
    config = builder.create_builder_config()
    for name in plan.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    if plan.workspace_bytes:
        _when_workspace_bytes(trt, config, plan)
    profile = None
    if plan.profile:
        profile = _when_profile(builder, config, plan)
    if plan.softmax_fp32_via_layer_precision:
        _when_softmax_fp32_via_layer_precision(trt, network)
    if plan.use_implicit_calibrator:
        _when_use_implicit_calibrator(config, calibrator, profile)
    if plan.dla_core is not None:
        _when_dla_core(trt, config, plan)
    if plan.timing_cache:
        _when_timing_cache(config, plan)
    stage("build")
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if serialized is None:
        raise CloExportError(f"TensorRT {running} could not build the engine (see the clo_export.tensorrt log); "
                             "rerun with --log-level verbose")
    stage("write")
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(serialized)
    if plan.timing_cache:
        _when_timing_cache__save(config, plan)
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    outputs = [network.get_output(i) for i in range(network.num_outputs)]
    return BuildInfo(
        engine_path=Path(out_path),
        tensorrt_version=str(trt.__version__),
        build_seconds=seconds,
        engine_bytes=Path(out_path).stat().st_size,
        input_names=tuple(t.name for t in inputs),
        output_names=tuple(t.name for t in outputs),
        input_shape=tuple(int(d) for d in inputs[0].shape) if inputs else (),
        network_layers=int(network.num_layers),
    )


def make_logger(trt: Any, log_level: str = "warning") -> Any:
    """A trt.ILogger that forwards messages at or above `log_level` to logging "clo_export.tensorrt"."""
    limit = SEVERITY_LIMIT[log_level]

    class _Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: Any, msg: str) -> None:
            level = int(severity)
            if level <= limit:
                TRT_LOG.log(SEVERITY_TO_LOGGING.get(level, logging.DEBUG), msg)

    return _Logger()


def _when_workspace_bytes(trt: Any, config: Any, plan: BuildPlan) -> None:
    """Cap the builder's scratch memory."""
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)


def _when_profile(builder: Any, config: Any, plan: BuildPlan) -> Any:
    """One optimisation profile for the dynamic batch dimension."""
    profile = builder.create_optimization_profile()
    profile.set_shape(plan.profile.name, plan.profile.min, plan.profile.opt, plan.profile.max)
    config.add_optimization_profile(profile)
    return profile


def _when_softmax_fp32_via_layer_precision(trt: Any, network: Any) -> None:
    """Pin every Softmax (the attention's) to FP32 compute and output in weakly typed FP16/INT8 builds."""
    pinned = 0
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if layer.type == trt.LayerType.SOFTMAX:
            layer.precision = trt.float32
            for j in range(layer.num_outputs):
                layer.set_output_type(j, trt.float32)
            pinned += 1
    log.debug("pinned %d Softmax layers to FP32", pinned)


def _when_use_implicit_calibrator(config: Any, calibrator: Any, profile: Any) -> None:
    """Legacy implicit INT8 calibration (TensorRT < 11); a dynamic network calibrates on its profile."""
    config.int8_calibrator = calibrator
    if profile is not None:
        config.set_calibration_profile(profile)


def _when_dla_core(trt: Any, config: Any, plan: BuildPlan) -> None:
    """Run on a DLA core by default (GPU_FALLBACK, if planned, is among the builder flags)."""
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = plan.dla_core


def _when_timing_cache(config: Any, plan: BuildPlan) -> None:
    """Start from the saved timing cache if there is one (a mismatched cache is dropped, not fatal)."""
    path = Path(plan.timing_cache)
    data = path.read_bytes() if path.is_file() else b""
    cache = config.create_timing_cache(data)
    if not config.set_timing_cache(cache, False):
        log.warning("timing cache %s does not match this GPU/TensorRT; starting a new one", path)
        config.set_timing_cache(config.create_timing_cache(b""), False)


def _when_timing_cache__save(config: Any, plan: BuildPlan) -> None:
    """Write the timing cache back atomically so the next build of any model starts warm."""
    with atomic_path(plan.timing_cache) as tmp:
        tmp.write_bytes(config.get_timing_cache().serialize())
