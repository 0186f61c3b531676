"""``clo-export trt``: a TensorRT engine (8.5 … 11.x) from an ONNX, plus its sidecar, in one command.

This module only parses options and renders results: flags are checked before anything is
loaded, then ``engine.build.build_engine`` (or ``dry_run`` with ``--dry-run --target V``, which
needs no TensorRT) does the work.
"""

from __future__ import annotations

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


def parse_batch_range(text: str | None) -> tuple[int, int, int] | None:
    """ "1,4,8" -> (1, 4, 8); "4" -> (4, 4, 4) (a fixed batch); None stays None."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) not in (1, 3) or not all(p.isdigit() for p in parts):
        raise CloExportError(f"--batch-range {text!r}: give MIN,OPT,MAX (e.g. 1,4,8) or one batch size")
    lo, opt, hi = [int(p) for p in parts] * (3 if len(parts) == 1 else 1)
    return lo, opt, hi  # the order is BuildRequest.validate's to check


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
        bool,
        typer.Option(
            "--gpu-fallback/--no-gpu-fallback",
            help="With --dla-core: let layers DLA cannot run fall back to the GPU.",
            rich_help_panel=BUILD,
        ),
    ] = True,
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
    from clo_export.engine import build
    from clo_export.engine.onnx_facts import read_keep_float
    from clo_export.engine.plan import BuildRequest
    from clo_export.validate import at_least

    if target is not None and not dry_run:
        raise CloExportError("--target is for --dry-run; a real build uses the installed TensorRT")
    at_least("--num", num, 1, "256 calibration images are recommended")
    request = BuildRequest(
        precision="int8" if int8 else "fp16" if fp16 else "fp32",
        calibrator=calibrator.value,
        batch_range=parse_batch_range(batch_range),
        workspace_gb=workspace,
        dla_core=dla,
        gpu_fallback=gpu_fallback,
        timing_cache=str(timing_cache) if timing_cache is not None else None,
        has_calib=bool(calib),
        strongly_typed=strongly_typed,
        keep_float=read_keep_float(keep_float) if keep_float is not None else (),
        keep_float_fp16=fp16 and int8,
    )
    if dry_run:
        result = build.dry_run(model, request, target, tuple(calib or ()))
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
                calib=tuple(calib or ()),
                num=num,
                min_agreement=min_agreement,
                verbose=is_verbose(),
                progress=lambda stage: status.update(STAGES.get(stage, stage)),
                check=not no_check,
            )
    except build.PreflightError as e:
        for problem in e.problems:
            err_console.print(f"problem: {problem}", highlight=False, markup=False, soft_wrap=True)
        raise
    render_build(done)


def render_build(done: Any) -> None:
    """The engine's summary table and notes; a failed self-check is the command's error."""
    from clo_export.fileio import is_stream

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
