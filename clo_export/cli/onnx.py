"""``clo-export onnx``: static-shape ONNX, simplified, linted and checked against PyTorch."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from typing_extensions import Annotated

from clo_export.cli.common import (
    OUT,
    POST,
    Cfg,
    Conf,
    ImgSz,
    Iou,
    MaxDet,
    Plugins,
    Weights,
    comparison_table,
    console,
    guarded,
    output_option,
)
from clo_export.errors import CloExportError
from clo_export.thresholds import DEFAULT

OnnxOutput = output_option("WEIGHTS with .onnx")


@guarded
def onnx(
    weights: Weights,
    cfg: Cfg = None,
    plugin: Plugins = None,
    imgsz: ImgSz = None,
    batch: Annotated[
        int,
        typer.Option("--batch", help="Batch size of the exported input (the example batch with --dynamic-batch)."),
    ] = 1,
    dynamic_batch: Annotated[
        bool, typer.Option("--dynamic-batch", help="Symbolic batch dimension; H and W stay fixed.")
    ] = False,
    opset: Annotated[
        int, typer.Option(help="ONNX opset (17 for TensorRT 8.5/8.6; above 20 uses the dynamo exporter).")
    ] = 17,
    half: Annotated[
        bool, typer.Option("--half", help="FP16 weights, activations and I/O; attention softmax kept in FP32.")
    ] = False,
    simplifier: Annotated[str, typer.Option(help="onnxsim, onnxslim or none.")] = "onnxsim",
    nms: Annotated[
        bool,
        typer.Option(
            "--nms",
            help="Append ONNX NonMaxSuppression with --conf, --iou, --max-det baked in: outputs num_dets, boxes, "
            "scores, classes.",
            rich_help_panel=POST,
        ),
    ] = False,
    conf: Conf = DEFAULT.conf,
    iou: Iou = DEFAULT.iou,
    max_det: MaxDet = DEFAULT.max_det,
    output: OnnxOutput = None,
    source: Annotated[
        Optional[Path],
        typer.Option(
            help="Images/video for the parity check (default: the bundled sample frames).",
            show_default=False,
            rich_help_panel=OUT,
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option("--check/--no-check", help="Compare ONNX Runtime with PyTorch after export.", rich_help_panel=OUT),
    ] = True,
) -> None:
    """Export a checkpoint to static-shape ONNX and check it against PyTorch."""
    from clo_export import export_onnx
    from clo_export.export.exporter import ExportOptions
    from clo_export.imgsz import parse_imgsz

    requested = parse_imgsz(imgsz) if imgsz is not None else None
    opts = ExportOptions(requested, batch, dynamic_batch, opset, half, simplifier, nms, conf, iou, max_det)
    with console.status("exporting…"):
        result = export_onnx(weights, output, opts, check=check, source=source, cfg=cfg, plugins=plugin or ())
    h, w = result.meta.imgsz
    s = result.simplify
    console.print(
        f"exported {result.path} ({result.path.stat().st_size / 1e6:.1f} MB, opset {opts.opset}, {opts.precision}, "
        f"input images {'batch' if dynamic_batch else batch}x3x{h}x{w}) in {result.seconds:.1f} s; "
        f"{s.used}: {s.nodes_before} -> {s.nodes_after} nodes{f' ({s.note})' if s.note else ''}"
        + (f"; sidecar {result.sidecar.name}" if result.sidecar else "")
    )
    if result.parity is None:
        console.print("parity check skipped (--no-check)")
        return
    if result.graph_parity is not None:
        console.print(comparison_table(result.graph_parity, "FP32 graph (before the FP16 conversion) vs PyTorch"))
    if result.parity is not result.graph_parity:
        console.print(comparison_table(result.parity, "ONNX Runtime vs PyTorch"))
    if not result.parity:
        raise CloExportError(f"parity {result.parity.describe()}")
    console.print("[green]parity: within tolerance[/]")
