"""Model summary (layers, parameters, GFLOPs) as YOLOv5 prints it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from clo_export.models.yolo import DEFAULT_CFG, DetectionModel


@dataclass(frozen=True)
class LayerRow:
    index: int
    f: int | list[int]
    n: int
    params: int
    module: str
    args: str


@dataclass(frozen=True)
class ModelSummary:
    layers: list[LayerRow]
    params: int
    gflops: float
    strides: list[int]
    nc: int
    size_multiple: int

    @property
    def n_layers(self) -> int:
        return len(list(self.layers))


def gflops(model: DetectionModel, imgsz: tuple[int, int]) -> float:
    """Forward FLOPs (2 x multiply-adds, as YOLOv5 reports) in billions at ``imgsz``."""
    model.check_imgsz(imgsz)
    p = next(model.parameters())
    x = torch.zeros(1, model.yaml.get("ch", 3), *imgsz, dtype=p.dtype, device=p.device)
    was_training = model.training
    counter = FlopCounterMode(display=False)
    try:
        model.eval()
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() / 1e9


def summarize(model: DetectionModel, imgsz: tuple[int, int]) -> ModelSummary:
    """Per-layer rows and totals."""
    rows = model.yaml["backbone"] + model.yaml["head"]
    layers = [
        LayerRow(m.i, m.f, rows[m.i][1], sum(p.numel() for p in m.parameters()), m.type, str(rows[m.i][3]))
        for m in model.model
    ]
    return ModelSummary(
        layers,
        sum(p.numel() for p in model.parameters()),
        gflops(model, imgsz),
        [int(s) for s in model.stride],
        model.nc,
        model.size_multiple(),
    )


def build_or_load(
    weights: Path | None, cfg: Path | None, plugins: tuple[Path, ...], imgsz: tuple[int, int] | None = None
) -> tuple[DetectionModel, str, tuple[int, int]]:
    """A checkpoint's model, or an untrained one from ``cfg``, with a title saying which and the size to summarise at.

    The size is ``imgsz``, else the checkpoint's training size, else 640 (:func:`resolve_imgsz` logs which).
    """
    from clo_export.blocks import load_plugins
    from clo_export.imgsz import resolve_imgsz
    from clo_export.models.checkpoint import load

    if weights is not None:
        loaded = load(weights, cfg, plugins)
        return loaded.model, loaded.describe(), resolve_imgsz(Path(weights).name, loaded.imgsz_hint, imgsz)
    load_plugins(plugins)
    model = DetectionModel(cfg or DEFAULT_CFG).eval()
    title = f"{Path(cfg or DEFAULT_CFG).name} (untrained)"
    return model, title, resolve_imgsz(title, None, imgsz)
