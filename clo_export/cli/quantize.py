"""``clo-export quantize``: explicit INT8 (Q/DQ) ONNX from calibration images, checked and compared with FP32."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

from clo_export.cli.common import console, guarded
from clo_export.errors import CloExportError

CAL = "Calibration"
OUT = "Output"
REP = "Accuracy report"


class Method(str, Enum):
    entropy = "entropy"
    minmax = "minmax"
    percentile = "percentile"


def accuracy_table(report) -> Table:
    """Per-output errors and detection agreement of INT8 against FP32."""
    mode = "attention FP32" if report.info.get("keep_attention_fp", True) else "attention INT8"
    table = Table(title=f"INT8 vs FP32 on {report.n_images} held-out images ({report.info.get('method')}, {mode})",
                  title_justify="left")
    for col in ("output", "cosine", "max |diff|", "mean |diff|"):
        table.add_column(col, justify="left" if col == "output" else "right")
    for name, s in report.tensors.items():
        table.add_row(name, f"{s.cosine:.6f}", f"{s.max_abs:.4g}", f"{s.mean_abs:.4g}")
    d = report.agreement
    table.add_row("detections @IoU0.5", f"P {d.precision:.4f}", f"R {d.recall:.4f}", f"F1 {d.f1:.4f}")
    table.add_row("", f"{d.n_ref} FP32 boxes", f"{d.n_test} INT8 boxes", f"IoU {d.mean_iou:.3f}")
    table.add_row("mAP@0.5 (FP32 as GT)", "–" if report.map50 is None else f"{report.map50:.4f}", "", "")
    return table


@guarded
def quantize(
    model: Annotated[Path, typer.Argument(help="FP32 ONNX from clo-export onnx.", show_default=False)],
    calib: Annotated[list[str], typer.Option("--calib", help="Images: folder (recursive), glob, video(s) or .txt list; repeatable.", rich_help_panel=CAL, show_default=False)],
    num: Annotated[int, typer.Option(help="Calibration images to sample (200+ recommended).", rich_help_panel=CAL)] = 256,
    holdout: Annotated[int, typer.Option(help="Other images from --calib for the accuracy report.", rich_help_panel=REP)] = 32,
    seed: Annotated[int, typer.Option(help="Sampling seed.", rich_help_panel=CAL)] = 0,
    method: Annotated[Method, typer.Option(help="Range method (entropy = TensorRT's EntropyCalibrator2).", rich_help_panel=CAL)] = Method.entropy,
    keep_attention_fp: Annotated[bool, typer.Option("--keep-attention-fp/--quantize-attention", help="Keep EfficientAttention's q*k, tanh, softmax path in float.", rich_help_panel=CAL)] = True,
    cache: Annotated[Path | None, typer.Option(help="Ranges cache JSON (default: OUTPUT with .calib.json).", rich_help_panel=CAL)] = None,
    recalibrate: Annotated[bool, typer.Option("--recalibrate", help="Ignore the ranges cache.", rich_help_panel=CAL)] = False,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Output path (default: MODEL with .int8.onnx).", rich_help_panel=OUT)] = None,
    min_agreement: Annotated[float | None, typer.Option(help="Exit 1 when INT8-vs-FP32 detection F1 is below this.", rich_help_panel=REP)] = None,
    conf: Annotated[float, typer.Option(help="Score threshold for the detections compared.", rich_help_panel=REP)] = 0.25,
    iou: Annotated[float, typer.Option(help="NMS IoU threshold for the detections compared.", rich_help_panel=REP)] = 0.45,
) -> None:
    """Quantize an FP32 ONNX to explicit INT8 (Q/DQ) for TensorRT and report its agreement with FP32."""
    from clo_export.calib.quantize import QuantizeOptions
    from clo_export.calib.quantize import quantize as run_quantize
    from clo_export.validate import check_quantize_options

    check_quantize_options(model, calib, num, holdout, seed)

    if min_agreement is not None and not 0 <= min_agreement <= 1:
        raise CloExportError(f"--min-agreement {min_agreement} must lie in [0, 1]")
    opts = QuantizeOptions(method.value, num, holdout, seed, keep_attention_fp, cache, recalibrate, conf, iou)
    opts.validate()
    columns = (TextColumn("calibrating"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("calibrate", total=None)
        result = run_quantize(model, calib, output, opts,
                              progress=lambda done, total: bar.update(task, completed=done, total=total))
    s = result.split
    source = f"{len(s.calib)} calibration + {len(s.holdout)} held-out images of {s.found} found"
    skipped = f", {len(s.skipped)} unreadable skipped" if s.skipped else ""
    ranges = "ranges from cache" if result.cache.status == "hit" else f"calibrated in {result.seconds['calibrate']:.1f} s"
    console.print(f"quantized {result.path} ({result.path.stat().st_size / 1e6:.1f} MB): {source}{skipped}; {ranges} "
                  f"({opts.method}); Q/DQ on {result.n_qdq_tensors} activations and {result.n_weights} weights; "
                  f"{len(result.attention_fp)} attention nodes kept float; TensorRT Q/DQ rules: ok")
    console.print(accuracy_table(result.report))
    console.print(f"report {result.accuracy_path.name}, sidecar {result.sidecar.name}, cache {result.cache_path.name}")
    if min_agreement is not None and result.report.score < min_agreement:
        raise CloExportError(f"INT8 detection agreement F1 {result.report.score:.4f} is below --min-agreement {min_agreement}; "
                             "try --method percentile/minmax, more --num images from the deployment scene, or keep attention float")
