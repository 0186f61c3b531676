"""``clo-export trt``: a TensorRT engine (8.5 … 11.x) from an ONNX, plus its sidecar, in one command.

Flags are checked before anything is loaded; the version-dependent choices come from
``engine.plan.make_plan`` for the installed TensorRT, and the ONNX variant the plan needs (Q/DQ
from ``--calib``, FP16 from the FP32 ONNX) is made on the way.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from clo_export.cli.common import console, guarded
from clo_export.errors import CloExportError

PREC = "Precision"
INT8 = "INT8"
BUILD = "Builder"
OUT = "Output"
STAGES = {"parse": "parsing the ONNX", "build": "building the engine (TensorRT tunes kernels: minutes)",
          "write": "writing the engine"}
CALIB_CACHE_SUFFIXES = (".cache", ".calib", ".bin")


class CalibratorChoice(str, Enum):
    qdq = "qdq"
    entropy = "entropy"
    minmax = "minmax"


@dataclass(frozen=True)
class Flags:
    """The command line after validation (no file contents read yet)."""

    precision: str
    calibrator: str
    calib: tuple[str, ...]
    num: int
    batch_range: tuple[int, int, int] | None
    workspace_gb: float | None
    dla_core: int | None
    gpu_fallback: bool
    strongly_typed: bool
    timing_cache: str | None


def parse_batch_range(text: str | None) -> tuple[int, int, int] | None:
    """"1,4,8" -> (1, 4, 8); "4" -> (4, 4, 4) (a fixed batch); None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 3) or not all(p.isdigit() for p in parts):
        raise CloExportError(f"--batch-range {text!r}: give MIN,OPT,MAX (e.g. 1,4,8) or one batch size")
    values = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
    lo, opt, hi = values
    if not 1 <= lo <= opt <= hi:
        raise CloExportError(f"--batch-range {text}: must satisfy 1 <= MIN <= OPT <= MAX")
    return lo, opt, hi


def validate_flags(model: Path, *, fp16: bool = False, int8: bool = False, calib: list[str] | None = None,
                   calibrator: str = "qdq", num: int = 256, workspace: float | None = None,
                   timing_cache: Path | None = None, dla: int | None = None, gpu_fallback: bool | None = None,
                   batch_range: str | None = None, strongly_typed: bool = False) -> Flags:
    """Refuse impossible flag combinations before any file is read or TensorRT imported."""
    if not model.is_file():
        raise CloExportError(f"model '{model}' does not exist; export one with: clo-export onnx best.pt")
    if model.suffix.lower() != ".onnx":
        raise CloExportError(f"'{model.name}' is not an ONNX file; clo-export trt builds from the .onnx that "
                             "clo-export onnx (or quantize) wrote")
    if fp16 and int8:
        raise CloExportError("choose one of --fp16 or --int8 (an INT8 engine already runs its float layers in FP16)")
    if calib and not int8:
        raise CloExportError("--calib is for --int8 builds; add --int8 or drop --calib")
    if calibrator != "qdq" and not int8:
        raise CloExportError(f"--calibrator {calibrator} only applies to --int8; add --int8 or drop --calibrator")
    if num < 1:
        raise CloExportError(f"--num {num} must be at least 1 (256 calibration images are recommended)")
    if workspace is not None and workspace <= 0:
        raise CloExportError(f"--workspace {workspace} must be a positive number of GiB")
    if dla is not None and dla < 0:
        raise CloExportError(f"--dla {dla} must be 0 or 1 (the Orin DLA cores)")
    if gpu_fallback is not None and dla is None:
        raise CloExportError("--gpu-fallback/--no-gpu-fallback only apply with --dla N")
    if timing_cache is not None and timing_cache.is_dir():
        raise CloExportError(f"--timing-cache {timing_cache} is a folder; give a file path (it is created if missing)")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    return Flags(precision, calibrator, tuple(calib or ()), num, parse_batch_range(batch_range), workspace, dla,
                 True if gpu_fallback is None else gpu_fallback, strongly_typed,
                 str(timing_cache) if timing_cache is not None else None)


@dataclass(frozen=True)
class OnnxFacts:
    """What the builder needs to know about the input ONNX."""

    meta: Any  # export.metadata.ModelMeta
    input_name: str
    input_shape: tuple[int, ...]  # -1 for a symbolic dimension
    is_qdq: bool
    is_fp16: bool

    @property
    def dynamic_batch(self) -> bool:
        return bool(self.input_shape) and self.input_shape[0] < 0

    @property
    def imgsz(self) -> tuple[int, int]:
        return tuple(self.meta.imgsz) if self.meta.imgsz else tuple(self.input_shape[2:4])


def read_onnx_facts(path: Path) -> OnnxFacts:
    """Metadata, first input, and whether the ONNX holds Q/DQ nodes or FP16 I/O (weights not loaded)."""
    import onnx

    from clo_export.export.metadata import read_metadata

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise CloExportError(f"cannot read ONNX '{path}': {str(e).splitlines()[0] if str(e) else e}") from e
    meta = read_metadata(model)
    initializers = {t.name for t in model.graph.initializer}
    inp = next((i for i in model.graph.input if i.name not in initializers), None)
    if inp is None:
        raise CloExportError(f"'{path.name}' has no graph input; re-export it with clo-export onnx")
    dims = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in inp.type.tensor_type.shape.dim)
    is_qdq = any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node)
    is_fp16 = meta.precision == "fp16" or inp.type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    return OnnxFacts(meta, inp.name, dims, is_qdq, is_fp16)


def default_engine_path(model: Path, precision: str) -> Path:
    """best.onnx -> best.engine, best.onnx --fp16 -> best.fp16.engine, best.int8.onnx -> best.int8.engine."""
    stem = model.stem
    tag = {"fp16": ".fp16", "int8": ".int8"}.get(precision, "")
    if tag and not stem.endswith(tag):
        stem += tag
    return model.with_name(stem + ".engine")


def make_request(flags: Flags, facts: OnnxFacts) -> Any:
    """The plan's BuildRequest from validated flags and the ONNX's facts."""
    from clo_export.engine.plan import BuildRequest

    return BuildRequest(
        precision=flags.precision, calibrator=flags.calibrator, is_qdq=facts.is_qdq, is_fp16=facts.is_fp16,
        dynamic_batch=facts.dynamic_batch, batch_range=flags.batch_range, workspace_gb=flags.workspace_gb,
        dla_core=flags.dla_core, gpu_fallback=flags.gpu_fallback, timing_cache=flags.timing_cache,
        has_calib=bool(flags.calib), strongly_typed=flags.strongly_typed, input_name=facts.input_name,
        input_shape=facts.input_shape,
    )


def make_fp16_onnx(model: Path, facts: OnnxFacts) -> Path:
    """MODEL.fp16.onnx from the FP32 ONNX (softmax kept FP32), as ``clo-export onnx --half`` writes it."""
    import onnx

    from clo_export.export.fp16 import to_fp16
    from clo_export.export.metadata import write_metadata
    from clo_export.fileio import atomic_path

    if facts.meta.nms:
        raise CloExportError(f"'{model.name}' ends in NMS; make its FP16 ONNX with clo-export onnx best.pt --half --nms "
                             "and pass that")
    out = model.with_name(model.stem + ".fp16.onnx")
    proto = to_fp16(onnx.load(str(model)))
    facts.meta.precision = "fp16"
    write_metadata(proto, facts.meta)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    return out


def calibration_inputs(flags: Flags, facts: OnnxFacts, engine: Path, batch: int) -> tuple[Any, Path]:
    """(feeds, TensorRT cache path) for the implicit calibrator: a cache file alone, or images."""
    from clo_export.calib.sources import CalibrationData, split_sources

    if len(flags.calib) == 1 and Path(flags.calib[0]).suffix.lower() in CALIB_CACHE_SUFFIXES:
        cache = Path(flags.calib[0])
        if not cache.is_file():
            raise CloExportError(f"calibration cache {cache} does not exist; pass calibration images with --calib DIR")
        return [], cache
    split = split_sources(list(flags.calib), flags.num, 0)
    cache = engine.with_name(f"{engine.stem}.{flags.calibrator}.cache")
    return CalibrationData(split.calib, facts.imgsz, facts.input_name, batch), cache


def summary_table(rows: list[tuple[str, str]]) -> Table:
    """Two columns: what, value."""
    table = Table(title="TensorRT engine", title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows:
        table.add_row(key, value)
    return table


@guarded
def trt(
    model: Annotated[Path, typer.Argument(help="ONNX from clo-export onnx (FP32, --half FP16) or clo-export quantize (Q/DQ).", show_default=False)],
    fp16: Annotated[bool, typer.Option("--fp16", help="FP16 engine (below TensorRT 11: FP16 flag; 11+: the FP16 ONNX).", rich_help_panel=PREC)] = False,
    int8: Annotated[bool, typer.Option("--int8", help="INT8 engine: the Q/DQ ONNX by default (quantized now from --calib).", rich_help_panel=PREC)] = False,
    calib: Annotated[list[str] | None, typer.Option("--calib", help="Calibration images (folder, glob, video, .txt list; repeatable) or a TensorRT calibration cache.", rich_help_panel=INT8, show_default=False)] = None,
    calibrator: Annotated[CalibratorChoice, typer.Option(help="qdq = explicit Q/DQ ONNX (all versions); entropy/minmax = TensorRT's implicit calibrators (below 11; DLA on JetPack 5).", rich_help_panel=INT8)] = CalibratorChoice.qdq,
    num: Annotated[int, typer.Option(help="Calibration images to sample.", rich_help_panel=INT8)] = 256,
    workspace: Annotated[float | None, typer.Option(help="Builder workspace limit in GiB.", rich_help_panel=BUILD, show_default=False)] = None,
    timing_cache: Annotated[Path | None, typer.Option("--timing-cache", help="Timing cache file: read if present, written after the build (faster rebuilds).", rich_help_panel=BUILD, show_default=False)] = None,
    dla: Annotated[int | None, typer.Option("--dla", "--dla-core", help="Run on DLA core N (Jetson Orin/Xavier).", rich_help_panel=BUILD, show_default=False)] = None,
    gpu_fallback: Annotated[bool | None, typer.Option("--gpu-fallback/--no-gpu-fallback", help="With --dla: let layers DLA cannot run fall back to the GPU (default on).", rich_help_panel=BUILD, show_default=False)] = None,
    batch_range: Annotated[str | None, typer.Option("--batch-range", "--batch", help="MIN,OPT,MAX batch for a dynamic-batch ONNX (e.g. 1,4,8), or one fixed size.", rich_help_panel=BUILD, show_default=False)] = None,
    strongly_typed: Annotated[bool, typer.Option("--strongly-typed", help="TensorRT 10.x: precision from the ONNX types, no FP16/INT8 flags (always on in 11).", rich_help_panel=BUILD)] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="TensorRT's verbose log.")] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Engine path (default: MODEL.engine, MODEL.fp16.engine, MODEL.int8.engine).", rich_help_panel=OUT, show_default=False)] = None,
) -> None:
    """Build a TensorRT engine (8.5 … 11.x) from an ONNX and write its sidecar ENGINE.json."""
    flags = validate_flags(model, fp16=fp16, int8=int8, calib=calib, calibrator=calibrator.value, num=num,
                           workspace=workspace, timing_cache=timing_cache, dla=dla, gpu_fallback=gpu_fallback,
                           batch_range=batch_range, strongly_typed=strongly_typed)
    out = output or default_engine_path(model, flags.precision)
    if out.resolve() == model.resolve():
        raise CloExportError(f"--output {out} would overwrite the ONNX; pick another path")
    facts = read_onnx_facts(model)

    from clo_export.engine.plan import make_plan
    from clo_export.lazy import lazy_import

    tensorrt = lazy_import("tensorrt")
    plan = make_plan(str(tensorrt.__version__), make_request(flags, facts))
    for note in plan.notes:
        console.print(f"[dim]note: {note}[/]", highlight=False)
    if verbose:
        logging.getLogger("clo_export").setLevel(logging.DEBUG)

    from clo_export.backends.cuda_memory import gpu_identity

    gpu_name, capability = gpu_identity(0)
    source = _source_onnx(plan, flags, facts, model)
    calibrator_obj = None
    if plan.use_implicit_calibrator:
        from clo_export.backends.cuda_memory import select_provider
        from clo_export.calib.trt_calibrator import make_calibrator

        batch = plan.profile.opt[0] if plan.profile else max(1, facts.input_shape[0])
        data, cache = calibration_inputs(flags, facts, out, batch)
        calibrator_obj = make_calibrator(data, flags.calibrator, cache, device=select_provider(device=0))
    info = _build(source, out, plan, calibrator_obj, "verbose" if verbose else "warning")
    side = _write_sidecar(out, info, plan, facts, model, gpu_name, capability)
    console.print(summary_table(_rows(out, side, info, plan, source, gpu_name, capability)))


def _source_onnx(plan: Any, flags: Flags, facts: OnnxFacts, model: Path) -> Path:
    """The ONNX the plan builds from: the given one, or its Q/DQ / FP16 variant made now."""
    if plan.needs_quantize:
        from clo_export.calib.quantize import QuantizeOptions, quantize

        with console.status("quantizing to Q/DQ with the --calib images…"):
            result = quantize(model, list(flags.calib), None, QuantizeOptions(num=flags.num))
        console.print(f"quantized {result.path.name}: INT8 keeps {result.report.score:.4f} of FP32's mAP@.5:.95 on "
                      f"{len(result.split.holdout)} held-out images (details: clo-export quantize)")
        return result.path
    if plan.needs_fp16_onnx:
        with console.status("making the FP16 ONNX…"):
            path = make_fp16_onnx(model, facts)
        console.print(f"made {path.name} (FP16, softmax kept FP32) for the strongly typed build")
        return path
    return model


def _build(source: Path, out: Path, plan: Any, calibrator: Any, log_level: str) -> Any:
    """build_engine under a spinner showing the stage and the elapsed time."""
    from clo_export.engine.build import build_engine

    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting TensorRT", total=None)
        return build_engine(source, out, plan, calibrator=calibrator, log_level=log_level,
                            progress=lambda stage: bar.update(task, description=STAGES.get(stage, stage)))


def _write_sidecar(out: Path, info: Any, plan: Any, facts: OnnxFacts, model: Path, gpu_name: str,
                   capability: tuple[int, int]) -> Any:
    from clo_export.engine.sidecar import EngineSidecar
    from clo_export.fileio import sha256_file

    names = facts.meta.names
    side = EngineSidecar(
        tensorrt_version=info.tensorrt_version, gpu_name=gpu_name, compute_capability=tuple(capability),
        precision=plan.precision, input_name=info.input_names[0] if info.input_names else facts.input_name,
        input_shape=tuple(info.input_shape or facts.input_shape), output_names=tuple(info.output_names),
        names=tuple(names.get(i, str(i)) for i in range(max(names, default=-1) + 1)), stride=int(facts.meta.stride),
        imgsz=tuple(facts.imgsz), source_onnx=model.name, source_onnx_sha256=sha256_file(model),
        build_seconds=round(info.build_seconds, 2),
        profile=(plan.profile.min, plan.profile.opt, plan.profile.max) if plan.profile else None,
    )
    side.write(out)
    return side


def _rows(out: Path, side: Any, info: Any, plan: Any, source: Path, gpu_name: str,
          capability: tuple[int, int]) -> list[tuple[str, str]]:
    from clo_export.backends.trt import engine_layer_count

    try:
        layers = f"{engine_layer_count(out)} after fusion ({info.network_layers} in the network)"
    except CloExportError:
        layers = f"{info.network_layers} in the network" if info.network_layers is not None else "–"
    mode = "strongly typed" if plan.strongly_typed else (
        "calibrator " + plan.calibrator_class if plan.use_implicit_calibrator else
        ("builder flags " + "+".join(f for f in plan.builder_flags if f in ("FP16", "INT8"))) if plan.builder_flags else "")
    shape = "x".join("N" if d < 0 else str(d) for d in side.input_shape)
    if side.profile:
        shape += f" (batch {side.profile[0][0]}…{side.profile[2][0]}, opt {side.profile[1][0]})"
    rows = [
        ("engine", str(out)),
        ("precision", f"{plan.precision}{f' ({mode})' if mode else ''}"),
        ("built from", source.name),
        ("input", f"{side.input_name} {shape}"),
        ("layers", layers),
        ("engine size", f"{info.engine_bytes / 1e6:.1f} MB"),
        ("build time", f"{info.build_seconds:.1f} s"),
        ("TensorRT", info.tensorrt_version),
        ("GPU", f"{gpu_name} (sm_{capability[0]}{capability[1]})"),
    ]
    if plan.dla_core is not None:
        rows.append(("DLA", f"core {plan.dla_core}{', GPU fallback' if 'GPU_FALLBACK' in plan.builder_flags else ''}"))
    if plan.timing_cache:
        rows.append(("timing cache", os.fspath(plan.timing_cache)))
    rows.append(("sidecar", f"{out.name}.json"))
    return rows
