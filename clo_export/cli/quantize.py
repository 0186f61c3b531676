"""``clo-export quantize``: explicit INT8 (Q/DQ) ONNX from calibration images, checked and compared with FP32."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from typing_extensions import Annotated

from clo_export.cli.common import CAL, Conf, Iou, Num, accuracy_table, console, guarded, output_option
from clo_export.thresholds import DEFAULT

REP = "Accuracy report"
Int8Output = output_option("MODEL with .int8.onnx")


class Method(str, Enum):
    auto = "auto"
    mse = "mse"
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"


def sensitivity_table(result) -> Table:
    """Per site: share of conv MACs, held-out box error and drop with it float (and alone INT8, when measured)."""
    chosen = set(result.choice.float_sites) if result.choice else set()
    base = result.method_scores.get(result.method)
    both = any(r.int8_alone is not None for r in result.sites)
    title = (
        "Sensitivity on the held-out images. box err: mean 1 - IoU vs FP32's boxes (%) with the site float, gain: "
        "what that recovers (sites after the output convs are measured with those float); drop: mAP@.5:.95 vs FP32 "
        "dets (points)"
    )
    if both:
        title += "; INT8 alone: drop with only the site INT8"
    if base:
        title += f"; all INT8: box err {base.box_error:.2f}, drop {base.drop50_95:.2f}"
    table = Table(title=title, title_justify="left")
    columns = ["site", "ops", "MACs", "box err", "gain", "drop"] + (["INT8 alone"] if both else []) + ["float"]
    for col in columns:
        table.add_column(
            col, justify="left" if col in ("site", "ops") else "right", overflow="fold", no_wrap=col == "site"
        )
    for r in sorted(result.sites, key=lambda r: (not r.site.output, -r.gain)):
        alone = ["–" if r.int8_alone is None else f"{r.int8_alone.drop50_95:.2f}"] if both else []
        table.add_row(
            r.site.name,
            r.site.ops,
            f"{100 * r.mac_share:.1f} %",
            f"{r.float_alone.box_error:.2f}",
            f"{r.gain:+.2f}",
            f"{r.float_alone.drop50_95:.2f}",
            *alone,
            "yes" if r.site.name in chosen else "",
        )
    return table


@contextmanager
def progress_bars() -> Iterator[dict[str, Callable[[int, int], None]]]:
    """Bars for quantize's long steps, calibrating (images) and refining ranges (tensors): ``quantize()``'s
    ``progress`` and ``refine_progress`` (the demo shows the same)."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[unit]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, transient=True) as bar:
        calibrating = bar.add_task("calibrating", total=None, unit="images")
        refining = bar.add_task("refining ranges", total=None, unit="tensors", visible=False)
        yield {
            "progress": lambda done, total: bar.update(calibrating, completed=done, total=total),
            "refine_progress": lambda done, total: bar.update(refining, completed=done, total=total, visible=True),
        }


@guarded
def quantize(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX from clo-export onnx.", show_default=False)],
    calib: Annotated[
        List[str],
        typer.Option(
            "--calib",
            help="Images: folder (recursive), glob, video(s) or .txt list; repeatable.",
            rich_help_panel=CAL,
            show_default=False,
        ),
    ],
    num: Num = 256,
    holdout: Annotated[
        int,
        typer.Option(
            help="Other images from --calib: they choose the method and float sites, and the report runs on them "
            "(0 or at least 16; with fewer images than the report needs all calibrate and accuracy is not measured).",
            rich_help_panel=REP,
        ),
    ] = 128,  # quantization.calibset.DEFAULT_HOLDOUT (not imported: it loads OpenCV)
    seed: Annotated[int, typer.Option(help="Sampling seed.", rich_help_panel=CAL)] = 0,
    method: Annotated[
        Method,
        typer.Option(
            help="Range method; auto tries each on the held-out images (entropy = TensorRT's EntropyCalibrator2).",
            rich_help_panel=CAL,
        ),
    ] = Method.auto,
    target_drop: Annotated[
        float,
        typer.Option(
            help="Keep the most sensitive sites float until the held-out mAP@.5:.95 drop is at most this (points).",
            rich_help_panel=CAL,
        ),
    ] = 0.3,
    all_int8: Annotated[
        bool,
        typer.Option(
            "--all-int8", help="No float fallback: every site INT8 (ignores --target-drop).", rich_help_panel=CAL
        ),
    ] = False,
    sensitivity: Annotated[
        bool,
        typer.Option(
            "--sensitivity",
            help="Also measure each site alone in INT8; print the table and write OUTPUT .sensitivity.json.",
            rich_help_panel=REP,
        ),
    ] = False,
    refine_ranges: Annotated[
        bool,
        typer.Option(
            "--refine-ranges/--no-refine-ranges",
            help="Scale each activation range where that significantly cuts the box error on calibration images "
            "(one sweep, a few minutes; needs held-out images).",
            rich_help_panel=CAL,
        ),
    ] = True,
    keep_attention_fp: Annotated[
        bool,
        typer.Option(
            "--keep-attention-fp/--quantize-attention",
            help="Keep EfficientAttention's q*k, tanh, softmax path in float.",
            rich_help_panel=CAL,
        ),
    ] = True,
    cache: Annotated[
        Optional[Path], typer.Option(help="Ranges cache JSON (default: OUTPUT with .calib.json).", rich_help_panel=CAL)
    ] = None,
    recalibrate: Annotated[
        bool, typer.Option("--recalibrate", help="Ignore the ranges cache.", rich_help_panel=CAL)
    ] = False,
    output: Int8Output = None,
    min_agreement: Annotated[
        Optional[float],
        typer.Option(
            help="Refuse (exit 1) when INT8's mAP@.5:.95 against FP32's detections on the held-out images, over FP32's "
            "own, is below this (0.95 by default, where measured); given explicitly, a run that cannot measure it "
            "refuses before any work. 0 accepts anything.",
            rich_help_panel=REP,
            show_default=False,
        ),
    ] = None,
    conf: Conf = DEFAULT.conf,
    iou: Iou = DEFAULT.iou,
) -> None:
    """Quantize an FP32 ONNX to explicit INT8 (Q/DQ) for TensorRT and report its agreement with FP32."""
    from clo_export.quantization.quantize import AgreementError, QuantizeOptions
    from clo_export.quantization.quantize import quantize as run_quantize

    opts = QuantizeOptions(
        method.value,
        num,
        holdout,
        seed,
        keep_attention_fp,
        cache,
        recalibrate,
        conf,
        iou,
        target_drop=None if all_int8 else target_drop,
        sensitivity=sensitivity,
        refine_ranges=refine_ranges,
        min_agreement=min_agreement,
    )
    try:
        with progress_bars() as bars:
            result = run_quantize(model, calib, output, opts, **bars)
    except AgreementError as e:  # the model is written and marked failed: show what was measured, then refuse
        summary(e.result, sensitivity)
        raise
    summary(result, sensitivity)


def summary(result, sensitivity: bool) -> None:
    """What quantize did: images, ranges, method, Q/DQ counts, float fallback, the accuracy table and the files."""
    s = result.split
    source = f"{len(s.calib)} calibration + {len(s.holdout)} held-out images of {s.found} found"
    skipped = f", {len(s.skipped)} unreadable skipped" if s.skipped else ""
    ranges = (
        "ranges from cache" if result.cache.status == "hit" else f"calibrated in {result.seconds['calibrate']:.1f} s"
    )
    tried = ", ".join(f"{m} {v.box_error:.2f} %" for m, v in result.method_scores.items())
    console.print(
        f"quantized {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): {source}{skipped}; {ranges}; "
        f"method {result.method}"
        + (f" (held-out box error: {tried})" if tried else "")
        + f"; Q/DQ on {result.n_qdq_tensors} activations and {result.n_weights} weights; "
        f"{len(result.attention_fp)} attention nodes kept float; TensorRT Q/DQ rules: ok"
    )
    if result.sites is not None and (sensitivity or result.choice and result.choice.float_sites):
        console.print(sensitivity_table(result))
    if result.choice is not None:
        c = result.choice
        console.print(
            f"float fallback: {', '.join(c.float_sites) or 'none'} ({len(c.float_nodes)} nodes); "
            f"{100 * result.int8_share:.1f} % of conv MACs INT8; {c.reason}",
            markup=False,
        )
    else:
        why = "no held-out images" if result.report.not_measured else "--all-int8"
        console.print(f"float fallback off ({why}); {100 * result.int8_share:.1f} % of conv MACs INT8")
    if result.refinement is not None:
        console.print(result.refinement.summary())
    console.print(accuracy_table(result.report))
    r, gate = result.report, result.report.info["gate"]
    if gate["outcome"] == "passed":
        console.print(
            f"INT8 keeps {r.score:.4f} of FP32's mAP@.5:.95: passed --min-agreement {gate['min_agreement']:g}"
        )
    elif gate["outcome"] == "not measured":
        console.print(f"INT8 accuracy not measured ({r.not_measured}); --min-agreement not checked", markup=False)
    extra = f", sensitivity {result.sensitivity_path.name}" if result.sensitivity_path else ""
    if result.accuracy_path is not None:
        console.print(
            f"report {result.accuracy_path.name} (float_nodes for clo-export trt --keep-float), sidecar "
            f"{result.sidecar.name}, cache {result.cache_path.name}{extra}; {sum(result.seconds.values()):.0f} s"
        )
