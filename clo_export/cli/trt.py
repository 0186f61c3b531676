"""``clo-export trt``: a TensorRT engine (8.5 … 11.x) from an ONNX, plus its sidecar, in one command.

This module only parses options and renders results: flags are checked before anything is
loaded, then ``engine.build.build_engine`` (or ``dry_run`` with ``--dry-run --target V``, which
needs no TensorRT) does the work.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional, Tuple

import typer
from rich.table import Table
from typing_extensions import Annotated

from clo_export.cli.common import CAL, Num, console, err_console, guarded, is_verbose, output_option
from clo_export.errors import CloExportError

PREC = "Precision"
BUILD = "Builder"
CHECK = "Pre-flight"
EngineOutput = output_option("MODEL.engine, MODEL.fp16.engine, MODEL.int8.engine")
STAGES = {
    "prepare": "preparing the ONNX",
    "build": "building the engine (TensorRT tunes kernels: minutes)",
    "write": "writing the engine",
    "check": "checking the engine against the FP32 ONNX",
}


class CalibratorChoice(str, Enum):
    qdq = "qdq"
    entropy = "entropy"
    minmax = "minmax"


@dataclass(frozen=True)
class Flags:
    """The command line after validation (no file contents read yet)."""

    precision: str
    calibrator: str
    calib: Tuple[str, ...]
    num: int
    batch_range: Optional[Tuple[int, int, int]]
    workspace_gb: Optional[float]
    dla_core: Optional[int]
    gpu_fallback: bool
    strongly_typed: bool
    timing_cache: Optional[str]
    keep_float_fp16: bool = False


def parse_batch_range(text: str | None) -> tuple[int, int, int] | None:
    """ "1,4,8" -> (1, 4, 8); "4" -> (4, 4, 4) (a fixed batch); None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 3) or not all(p.isdigit() for p in parts):
        raise CloExportError(f"--batch-range {text!r}: give MIN,OPT,MAX (e.g. 1,4,8) or one batch size")
    from clo_export.engine.plan import check_batch_range

    lo, opt, hi = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
    check_batch_range((lo, opt, hi))
    return lo, opt, hi


def validate_flags(
    model: Path,
    *,
    fp16: bool = False,
    int8: bool = False,
    calib: list[str] | None = None,
    calibrator: str = "qdq",
    num: int = 256,
    workspace: float | None = None,
    timing_cache: Path | None = None,
    dla: int | None = None,
    gpu_fallback: bool | None = None,
    batch_range: str | None = None,
    strongly_typed: bool = False,
    keep_float: Path | None = None,
) -> Flags:
    """Refuse impossible flag combinations before any file is read or TensorRT imported."""
    if not model.is_file():
        from clo_export.data.files import refuse_special

        refuse_special("model", model, "pass the .onnx clo-export onnx wrote")  # a FIFO or device: named, never opened
        raise CloExportError(f"model '{model}' does not exist; export one with: clo-export onnx best.pt")
    if model.suffix.lower() != ".onnx":
        raise CloExportError(
            f"'{model.name}' is not an ONNX file; clo-export trt builds from the .onnx that "
            "clo-export onnx (or quantize) wrote"
        )
    if fp16 and int8 and keep_float is None:
        raise CloExportError("choose one of --fp16 or --int8 (an INT8 engine already runs its float layers in FP16)")
    if keep_float is not None and not keep_float.is_file():
        raise CloExportError(
            f"--keep-float {keep_float} does not exist; pass the JSON report clo-export quantize wrote"
        )
    if calib and not int8:
        raise CloExportError("--calib is for --int8 builds; add --int8 or drop --calib")
    if num < 1:
        raise CloExportError(f"--num {num} must be at least 1 (256 calibration images are recommended)")
    if gpu_fallback is not None and dla is None:
        raise CloExportError("--gpu-fallback/--no-gpu-fallback only apply with --dla-core N")
    if timing_cache is not None and timing_cache.is_dir():
        raise CloExportError(f"--timing-cache {timing_cache} is a folder; give a file path (it is created if missing)")
    precision = "int8" if int8 else "fp16" if fp16 else "fp32"
    flags = Flags(
        precision,
        calibrator,
        tuple(calib or ()),
        num,
        parse_batch_range(batch_range),
        workspace,
        dla,
        True if gpu_fallback is None else gpu_fallback,
        strongly_typed,
        str(timing_cache) if timing_cache is not None else None,
        fp16 and int8,
    )
    from clo_export.engine.plan import check_request

    check_request(make_request(flags))  # the value checks live with the plan, whose messages name these flags
    return flags


def make_request(flags: Flags, keep_float: Tuple[str, ...] = ()) -> Any:
    """The plan's BuildRequest from validated flags (the ONNX's facts are added by the library)."""
    from clo_export.engine.plan import BuildRequest

    return BuildRequest(
        precision=flags.precision,
        calibrator=flags.calibrator,
        batch_range=flags.batch_range,
        workspace_gb=flags.workspace_gb,
        dla_core=flags.dla_core,
        gpu_fallback=flags.gpu_fallback,
        timing_cache=flags.timing_cache,
        has_calib=bool(flags.calib),
        strongly_typed=flags.strongly_typed,
        keep_float=keep_float,
        keep_float_fp16=flags.keep_float_fp16,
    )


def plan_rows(plan: Any) -> List[Tuple[str, str]]:
    """The build plan as (what, value) rows."""
    mode = (
        "strongly typed"
        if plan.strongly_typed
        else (
            "calibrator " + plan.calibrator_class
            if plan.use_implicit_calibrator
            else ("builder flags " + "+".join(f for f in plan.builder_flags if f in ("FP16", "INT8")))
            if plan.builder_flags and plan.precision != "fp32"
            else ""
        )
    )
    onnx = {"fp32": "FP32 ONNX", "fp16": "FP16 ONNX", "qdq": "Q/DQ ONNX"}[plan.onnx_needed]
    made = " (made from the given one)" if plan.needs_quantize or plan.needs_fp16_onnx else ""
    rows = [
        ("TensorRT", str(plan.version)),
        ("precision", f"{plan.precision}{f' ({mode})' if mode else ''}"),
        ("built from", onnx + made),
        ("network flags", ", ".join(plan.network_flags) or "–"),
        ("builder flags", ", ".join(plan.builder_flags) or "–"),
    ]
    if plan.profile:
        rows.append(("profile", f"{plan.profile.name} {plan.profile.min} … {plan.profile.max}, opt {plan.profile.opt}"))
    if plan.dla_core is not None:
        rows.append(("DLA", f"core {plan.dla_core}{', GPU fallback' if 'GPU_FALLBACK' in plan.builder_flags else ''}"))
    if plan.layer_precisions:
        rows.append(("layer precisions", f"{len(plan.layer_precisions)} layers {plan.layer_precisions[0][1]}"))
    if plan.workspace_bytes:
        rows.append(("workspace", f"{plan.workspace_bytes / (1 << 30):g} GiB"))
    if plan.timing_cache:
        rows.append(("timing cache", plan.timing_cache))
    return rows


def summary_table(title: str, rows: List[Tuple[str, str]]) -> Table:
    """Two columns: what, value."""
    table = Table(title=title, title_justify="left", show_header=False)
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows:
        table.add_row(key, value)
    return table


def render_dry_run(result: Any, model: Path) -> None:
    """The plan, its notes, one line per problem, and the verdict."""
    shape = "x".join("N" if d < 0 else str(d) for d in result.facts.input_shape)
    rows = [*plan_rows(result.plan)[:3], ("input", f"{result.facts.input_name} {shape}"), *plan_rows(result.plan)[3:]]
    console.print(summary_table(f"{model.name}: build plan (dry run)", rows))
    for note in result.plan.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    if result.gpu_layers:
        console.print(
            f"note: {len(result.gpu_layers)} nodes run on the GPU, not the DLA "
            f"(e.g. {', '.join(result.gpu_layers[:3])})",
            highlight=False,
            markup=False,
        )
    for problem in result.problems:
        console.print(f"problem: {problem}", highlight=False, markup=False, soft_wrap=True)
    verdict = (
        f"pre-flight check for TensorRT {result.plan.version}: "
        f"{len(result.problems)} problem{'s' if len(result.problems) != 1 else ''}"
        if result.problems
        else f"pre-flight check for TensorRT {result.plan.version}: passed"
    )
    console.print(verdict, highlight=False, markup=False)


@guarded
def trt(
    model: Annotated[
        Path,
        typer.Argument(
            help="ONNX from clo-export onnx (FP32, --half FP16) or clo-export quantize (Q/DQ).", show_default=False
        ),
    ],
    fp16: Annotated[
        bool,
        typer.Option(
            "--fp16",
            help="FP16 engine (below TensorRT 11: FP16 flag; 11+: the FP16 ONNX). With --int8 --keep-float: those "
            "layers in FP16.",
            rich_help_panel=PREC,
        ),
    ] = False,
    int8: Annotated[
        bool,
        typer.Option(
            "--int8", help="INT8 engine: the Q/DQ ONNX by default (quantized now from --calib).", rich_help_panel=PREC
        ),
    ] = False,
    calib: Annotated[
        Optional[List[str]],
        typer.Option(
            "--calib",
            help="Calibration images (folder, glob, video, .txt list; repeatable) or a TensorRT calibration cache.",
            rich_help_panel=CAL,
            show_default=False,
        ),
    ] = None,
    calibrator: Annotated[
        CalibratorChoice,
        typer.Option(
            help="qdq = explicit Q/DQ ONNX (all versions); entropy/minmax = TensorRT's implicit calibrators (below "
            "11; DLA on JetPack 5).",
            rich_help_panel=CAL,
        ),
    ] = CalibratorChoice.qdq,
    num: Num = 256,
    min_agreement: Annotated[
        Optional[float],
        typer.Option(
            help="With --int8 --calib: clo-export quantize's accuracy gate (0.95 by default, where measured; see its "
            "--help).",
            rich_help_panel=CAL,
            show_default=False,
        ),
    ] = None,
    keep_float: Annotated[
        Optional[Path],
        typer.Option(
            "--keep-float",
            help='JSON with a "float_nodes" list (clo-export quantize\'s report): keep those layers in float on the '
            "implicit-calibrator and DLA routes.",
            rich_help_panel=CAL,
            show_default=False,
        ),
    ] = None,
    workspace: Annotated[
        Optional[float], typer.Option(help="Builder workspace limit in GiB.", rich_help_panel=BUILD, show_default=False)
    ] = None,
    timing_cache: Annotated[
        Optional[Path],
        typer.Option(
            "--timing-cache",
            help="Timing cache file: read if present, written after the build (faster rebuilds).",
            rich_help_panel=BUILD,
            show_default=False,
        ),
    ] = None,
    dla: Annotated[
        Optional[int],
        typer.Option(
            "--dla-core",
            "--dla",
            help="Run on DLA core N (Jetson Orin/Xavier).",
            rich_help_panel=BUILD,
            show_default=False,
        ),
    ] = None,
    gpu_fallback: Annotated[
        Optional[bool],
        typer.Option(
            "--gpu-fallback/--no-gpu-fallback",
            help="With --dla-core: let layers DLA cannot run fall back to the GPU (default on).",
            rich_help_panel=BUILD,
            show_default=False,
        ),
    ] = None,
    batch_range: Annotated[
        Optional[str],
        typer.Option(
            "--batch-range",
            "--batch",
            help="Batch profile MIN,OPT,MAX for a dynamic-batch ONNX (e.g. 1,4,8), or one fixed size.",
            rich_help_panel=BUILD,
            show_default=False,
        ),
    ] = None,
    strongly_typed: Annotated[
        bool,
        typer.Option(
            "--strongly-typed",
            help="TensorRT 10.x: precision from the ONNX types, no FP16/INT8 flags (always on in 11).",
            rich_help_panel=BUILD,
        ),
    ] = False,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="Print the build plan and check the ONNX against the target's parser rules; needs no TensorRT.",
            rich_help_panel=CHECK,
        ),
    ] = False,
    target: Annotated[
        Optional[str],
        typer.Option(
            "--target",
            help="TensorRT version for --dry-run: 8.5, 8.6, 10.3, 10.x, 11.x or e.g. 10.7.0 (default: the installed "
            "one).",
            rich_help_panel=CHECK,
            show_default=False,
        ),
    ] = None,
    no_check: Annotated[
        bool,
        typer.Option(
            "--no-check",
            help='Skip running the new engine against ONNX Runtime on the FP32 ONNX (the sidecar then says "not '
            'checked").',
            rich_help_panel=CHECK,
        ),
    ] = False,
    output: EngineOutput = None,
) -> None:
    """Build a TensorRT engine (8.5 … 11.x) from an ONNX and write its sidecar ENGINE.json."""
    flags = validate_flags(
        model,
        fp16=fp16,
        int8=int8,
        calib=calib,
        calibrator=calibrator.value,
        num=num,
        workspace=workspace,
        timing_cache=timing_cache,
        dla=dla,
        gpu_fallback=gpu_fallback,
        batch_range=batch_range,
        strongly_typed=strongly_typed,
        keep_float=keep_float,
    )
    if target is not None and not dry_run:
        raise CloExportError("--target is for --dry-run; a real build uses the installed TensorRT")
    from clo_export.engine import build
    from clo_export.engine.onnx_facts import read_keep_float
    from clo_export.fileio import is_stream

    request = make_request(flags, read_keep_float(keep_float) if keep_float is not None else ())
    if dry_run:
        result = build.dry_run(model, request, target, flags.calib)
        render_dry_run(result, model)
        if not result:
            raise typer.Exit(1)
        return
    try:
        with console.status(STAGES["prepare"]) as status:
            done = build.build_engine(
                model,
                request,
                output,
                calib=flags.calib,
                num=flags.num,
                min_agreement=min_agreement,
                verbose=is_verbose(),
                progress=lambda stage: status.update(STAGES.get(stage, stage)),
                check=not no_check,
            )
    except build.PreflightError as e:
        for problem in e.problems:
            err_console.print(f"problem: {problem}", highlight=False, markup=False, soft_wrap=True)
        raise
    for note in done.plan.notes:
        console.print(f"note: {note}", highlight=False, markup=False)
    side = done.sidecar
    rows = [
        ("engine", str(done.engine_path)),
        *plan_rows(done.plan)[1:3],
        ("input", f"{side.input_name} " + "x".join("N" if d < 0 else str(d) for d in side.input_shape)),
        ("engine size", f"{done.engine_bytes / 1e6:.1f} MB"),
        ("build time", f"{done.build_seconds:.1f} s"),
        ("TensorRT", side.tensorrt_version),
        ("GPU", f"{side.gpu_name} (sm_{''.join(map(str, side.compute_capability))})"),
        *([] if is_stream(done.engine_path) else [("sidecar", f"{done.engine_path.name}.json")]),
    ]
    if done.calibration_cache is not None:
        rows.append(("calibration cache", str(done.calibration_cache)))
    check = done.check
    rows.append(
        (
            "check",
            "not checked (--no-check)"
            if check is None
            else f"{check.status}: vs {check.reference} ({check.why}), {check.frames}",
        )
    )
    console.print(summary_table("TensorRT engine", rows))
    if check is not None and not check:
        for failure in check.report.failures:
            console.print(f"failure: {failure}", highlight=False, markup=False, soft_wrap=True)
        raise CloExportError(
            f"the engine does not match {check.reference} within the "
            f"{check.report.precision} tolerance; it is written, marked failed in "
            f"{done.engine_path.name}.json, for inspection (a TensorRT miscompile: try another "
            "TensorRT version, or build with --no-check at your own risk)"
        )
