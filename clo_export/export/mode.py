"""Export mode, decided in one place: a fused copy of the model whose blocks take their static form.

A forward pass at the export size records every block's input shapes; each registered block
with an export hook then fixes its sizes (EfficientAttention's reshapes, Detect's grids and
views) or swaps in export-friendly math (MemoryEfficientSwish -> x*sigmoid(x)). The result is
both what is traced to ONNX and the PyTorch reference the ONNX is compared against.
"""

from __future__ import annotations

import torch
from torch import nn

from clo_export.models.yolo import DetectionModel
from clo_export.registry import REGISTRY, ExportContext


def input_shapes(args: tuple) -> tuple[tuple[int, ...], ...]:
    """Shapes of a forward's tensor input(s); Detect and Concat take a list."""
    first = args[0]
    tensors = first if isinstance(first, (list, tuple)) else [first]
    return tuple(tuple(t.shape) for t in tensors)


def export_model(
    model: DetectionModel, imgsz: tuple[int, int], batch: int = 1, dynamic_batch: bool = False
) -> DetectionModel:
    """A fused, FP32, eval-mode copy of ``model`` in export form for a fixed ``imgsz``."""
    model.check_imgsz(imgsz)
    m = model.fuse().float().eval()  # fuse() returns a copy
    hooked = {mod: REGISTRY.block_for(mod) for mod in m.modules()}
    hooked = {mod: block for mod, block in hooked.items() if block is not None and block.export is not None}
    shapes: dict[nn.Module, tuple[tuple[int, ...], ...]] = {}
    handles = [
        mod.register_forward_pre_hook(lambda mod, args: shapes.__setitem__(mod, input_shapes(args))) for mod in hooked
    ]
    try:
        with torch.no_grad():
            m(torch.zeros(batch, m.yaml.get("ch", 3), *imgsz))
    finally:
        for h in handles:
            h.remove()
    for mod, block in hooked.items():
        block.export(mod, ExportContext(shapes[mod], dynamic_batch))
    return m
