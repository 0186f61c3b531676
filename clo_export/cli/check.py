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
    from clo_export.artifacts import check_contract
    from clo_export.backends.pytorch import load_reference
    from clo_export.backends.select import load_runner
    from clo_export.data.readers import open_source
    from clo_export.imgsz import parse_imgsz, runner_imgsz
    from clo_export.pipeline import Checker, InferOptions, Pipeline
    from clo_export.validate import check_check_options

    opts = InferOptions(conf=conf, iou=iou, check_every=1, min_f1=min_f1)
    opts.validate()
    out = json_out or model.with_name(model.name + ".check.json")
    check_check_options(model, weights, source, limit, frames, out, json_out is not None, report)
    requested = parse_imgsz(imgsz) if imgsz is not None else None
    reference, trained = load_reference(weights, requested)  # at its training size unless --imgsz
    runner, info = load_runner(model, device, imgsz=runner_imgsz(model, requested, trained.imgsz))
    src = open_source(source, limit)
    with runner, reference:
        check_contract(info, trained)  # classes, stride and size before any frame, once the model has loaded
        checker = Checker(reference, info, opts, keep_worst=frames if report else 0)
        with console.status(f"comparing {info.backend} with PyTorch on {src.describe()}…"):
            result = Pipeline(src, runner, info, [], opts, checker).run()
    rep = result.check
    if rep is None:
        raise CloExportError(f"no frame of '{source}' could be compared; pass images or a video")
    console.print(comparison_table(rep, f"{model.name} ({info.backend}) vs {weights.name} (PyTorch)"))
    facts = {"model": str(model), "weights": str(weights), "source": source, "backend": info.backend}
    write_reports(out, json_out is not None, report, result, checker, facts, opts, info.names)
    if result.skipped:
        console.print(f"[yellow]{result.skipped} unreadable frame(s)/image(s) skipped[/]")
    if not rep:
        raise CloExportError(f"check {rep.describe()} ({model.name} vs {weights.name})")
    console.print("[green]check: within tolerance[/]")


def write_reports(out: Path, named: bool, html: Optional[Path], result, checker, facts: dict, opts, names) -> None:
    """The JSON report (always) and the HTML page (``html``), each announced in one line."""
    from clo_export.fileio import write_sidecar

    rep = result.check
    payload = {
        **facts,
        "frames": result.frames,
        "skipped": result.skipped,
        "conf": opts.conf,
        "iou": opts.iou,
        "report": rep.to_dict(),
        "frame_f1": [round(f, 5) for f in checker.frame_f1s()],
    }
    write_sidecar(out, payload, named_by_user=named)
    console.print(f"JSON report: {out}")
    if html is None:
        return
    from clo_export.report_html import write_html_report

    model, weights = Path(facts["model"]).name, Path(facts["weights"]).name
    shown = {"model": model, "backend": facts["backend"], "weights": weights, "source": facts["source"]}
    shown["conf / iou"] = f"{opts.conf} / {opts.iou}"
    write_html_report(html, rep, checker.worst(), names, f"{model} vs {weights}", shown)
    console.print(f"HTML report: {html}")
