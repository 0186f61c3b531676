"""``clo-export check``: run an exported model and its PyTorch checkpoint on the same frames and compare."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from clo_export.cli.common import IMGSZ, OUT, POST, Conf, Device, Iou, comparison_table, console, guarded
from clo_export.errors import CloExportError
from clo_export.thresholds import DEFAULT

Model = Annotated[Path, typer.Argument(help="Model to check: .onnx, .engine (or .pt).", show_default=False)]
CheckWeights = Annotated[
    Path, typer.Option("--weights", "-w", help="The PyTorch checkpoint (best.pt) it was made from.", show_default=False)
]


@guarded
def check(
    model: Model,
    weights: CheckWeights,
    source: Annotated[
        str, typer.Option("--source", "-s", help="Images, folder, glob or video to compare on.", show_default=False)
    ],
    limit: Annotated[int, typer.Option(help="Compare at most this many frames.")] = 200,
    conf: Conf = DEFAULT.conf,
    iou: Iou = DEFAULT.iou,
    min_f1: Annotated[
        Optional[float],
        typer.Option(
            "--min-f1",
            help="Detection F1 to pass (default per precision: fp32 0.999, fp16 0.98, int8 0.9).",
            rich_help_panel=POST,
        ),
    ] = None,
    device: Device = None,
    imgsz: Annotated[
        Optional[str],
        typer.Option(
            *IMGSZ,
            help="Size to check at when it is not the checkpoint's training size (the model must take it).",
            show_default=False,
        ),
    ] = None,
    json_out: Annotated[
        Optional[Path], typer.Option("--json", help="JSON report (default: MODEL.check.json).", rich_help_panel=OUT)
    ] = None,
    report: Annotated[
        Optional[Path],
        typer.Option(
            "--report", help="HTML page with the numbers and the frames that disagree most.", rich_help_panel=OUT
        ),
    ] = None,
    frames: Annotated[int, typer.Option(help="Side-by-side frames in the HTML report.", rich_help_panel=OUT)] = 4,
) -> None:
    """Compare MODEL with its PyTorch checkpoint on real frames: table, JSON report, optional HTML."""
    from clo_export import check_model
    from clo_export.imgsz import parse_imgsz
    from clo_export.pipeline import InferOptions

    opts = InferOptions(conf=conf, iou=iou, check_every=1, min_f1=min_f1)
    size = parse_imgsz(imgsz) if imgsz is not None else None
    with console.status(f"comparing {model.name} with PyTorch on {source}…"):
        done = check_model(
            model,
            weights,
            source,
            opts,
            limit=limit,
            device=device,
            imgsz=size,
            json_out=json_out,
            html=report,
            html_frames=frames,
        )
    console.print(comparison_table(done.report, f"{model.name} ({done.backend}) vs {weights.name} (PyTorch)"))
    console.print(f"JSON report: {done.json_path}")
    if done.html_path is not None:
        console.print(f"HTML report: {done.html_path}")
    if done.skipped:
        console.print(f"[yellow]{done.skipped} unreadable frame(s)/image(s) skipped[/]")
    if not done:
        raise CloExportError(f"check {done.report.describe()} ({model.name} vs {weights.name})")
    console.print("[green]check: within tolerance[/]")
