"""``clo-export info``: what a checkpoint or config holds, as YOLOv5's model summary."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from clo_export.cli.common import Cfg, ImgSz, Plugins, console, guarded
from clo_export.errors import CloExportError


@guarded
def info(
    weights: Annotated[
        Optional[Path],
        typer.Argument(
            help="Checkpoint (best.pt; --weights best.pt works too); omit to summarise --cfg untrained.",
            show_default=False,
        ),
    ] = None,
    cfg: Cfg = None,
    plugin: Plugins = None,
    imgsz: ImgSz = None,
    fuse: Annotated[bool, typer.Option("--fuse", help="Fold BatchNorm into convolutions first.")] = False,
    layers: Annotated[bool, typer.Option("--layers/--no-layers", help="List every layer.")] = True,
) -> None:
    """Summarise a model: layers, parameters, GFLOPs, strides, classes."""
    from clo_export.imgsz import check_memory, parse_imgsz
    from clo_export.models.summary import build_or_load, summarize

    if weights is None and cfg is None:
        raise CloExportError("give a checkpoint or --cfg model.yaml to summarise")
    requested = parse_imgsz(imgsz) if imgsz is not None else None
    model, title, size = build_or_load(weights, cfg, tuple(plugin or ()), requested)
    if fuse:
        model = model.fuse()
    check_memory(model, size, 1, factor=1)  # the summary runs a forward pass at that size
    s = summarize(model, size)
    if layers:
        table = Table(title=title, title_justify="left")
        for col in ("#", "from", "n", "params", "module", "arguments"):
            table.add_column(col, justify="right" if col in ("#", "n", "params") else "left")
        for r in s.layers:
            table.add_row(str(r.index), str(r.f), str(r.n), f"{r.params:,}", r.module, r.args)
        console.print(table)
    console.print(
        f"{s.n_layers} layers, {s.params:,} parameters, {s.gflops:.1f} GFLOPs at {size[0]}x{size[1]}, "
        f"strides {s.strides}, {s.nc} classes; image sizes must be multiples of {s.size_multiple}"
    )
