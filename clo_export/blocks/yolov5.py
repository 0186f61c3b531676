"""YOLOv5 v7.0 core blocks with YOLOv5's attribute and state-dict names.

Checkpoints pickle these as ``models.common.Conv``, ``models.yolo.Detect`` and so on; the
safe loader maps those class names here. ``Detect`` returns the raw maps in training mode
and the decoded ``(batch, N, 5+nc)`` tensor in eval mode (YOLOv5's export output).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from clo_export.errors import CloExportError
from clo_export.registry import LayerContext, LayerSpec, register_block


def autopad(k: int | list[int], p: int | None = None, d: int = 1) -> int | list[int]:
    """Padding for 'same' output size (YOLOv5's autopad, dilation-aware)."""
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


@register_block("Conv", kind="channels")
class Conv(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + SiLU; after fusing, Conv2d with bias + SiLU."""

    def __init__(
        self,
        c1: int,
        c2: int,
        k: int = 1,
        s: int = 1,
        p: int | None = None,
        g: int = 1,
        d: int = 1,
        act: bool | nn.Module = True,
    ):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = nn.SiLU() if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = getattr(self, "bn", None)
        return self.act(self.conv(x) if bn is None else bn(self.conv(x)))

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        """Forward of the fused form (kept for YOLOv5 API compatibility)."""
        return self.act(self.conv(x))


@register_block("Bottleneck", kind="channels")
class Bottleneck(nn.Module):
    """1x1 then 3x3 Conv, with a residual add when shapes allow."""

    def __init__(self, c1: int, c2: int, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_, c2, 3, 1, g=g)
        self.add = shortcut and c1 == c2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.cv2(self.cv1(x))
        return x + y if self.add else y


@register_block("C3", kind="repeated")
class C3(nn.Module):
    """CSP bottleneck with 3 convolutions."""

    def __init__(self, c1: int, c2: int, n: int = 1, shortcut: bool = True, g: int = 1, e: float = 0.5):
        super().__init__()
        c_ = int(c2 * e)
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c1, c_, 1, 1)
        self.cv3 = Conv(2 * c_, c2, 1)
        self.m = nn.Sequential(*(Bottleneck(c_, c_, shortcut, g, e=1.0) for _ in range(n)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


@register_block("SPPF", kind="channels")
class SPPF(nn.Module):
    """Spatial pyramid pooling, fast: three chained max-pools concatenated."""

    def __init__(self, c1: int, c2: int, k: int = 5):
        super().__init__()
        c_ = c1 // 2
        self.cv1 = Conv(c1, c_, 1, 1)
        self.cv2 = Conv(c_ * 4, c2, 1, 1)
        self.m = nn.MaxPool2d(kernel_size=k, stride=1, padding=k // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


@register_block("Concat", kind="concat")
class Concat(nn.Module):
    """Concatenate a list of tensors along dimension ``d``."""

    def __init__(self, dimension: int = 1):
        super().__init__()
        self.d = dimension

    def forward(self, x: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(x, self.d)


register_block(("nn.Upsample", "Upsample"), nn.Upsample, kind="plain")


@dataclass(frozen=True)
class DetectExport:
    """Detect's export form: batch (-1 when dynamic), and per level (ny, nx), stride and constant grids."""

    batch: int
    maps: tuple[tuple[int, int], ...]
    strides: tuple[float, ...]
    grids: tuple[tuple[torch.Tensor, torch.Tensor], ...]


def parse_detect(ctx: LayerContext) -> LayerSpec:
    """Detect gets ``[nc, anchors, [ch of each input]]``; an int anchors means that many per level."""
    args = list(ctx.args)
    froms = [ctx.f] if isinstance(ctx.f, int) else list(ctx.f)
    if len(args) < 2:
        raise CloExportError(f"Detect needs [nc, anchors] as args, got {args!r}")
    if isinstance(args[1], int):
        args[1] = [list(range(args[1] * 2))] * len(froms)
    if not isinstance(args[1], (list, tuple)) or len(args[1]) != len(froms):
        raise CloExportError(
            f"Detect takes {len(froms)} input layers {froms} but the config gives anchors for "
            f"{len(args[1]) if isinstance(args[1], (list, tuple)) else args[1]!r} levels; "
            "give one [w, h, …] anchor list per input layer"
        )
    args.append([ctx.ch[x] for x in froms])
    return LayerSpec(args, dict(ctx.kwargs), ctx.c1, ctx.n)


def export_detect(m: "Detect", ctx) -> None:
    """Give Detect constant grids and static view sizes for the export input size."""
    maps = tuple((h, w) for (_, _, h, w) in ctx.input_shapes)
    device = m.anchors.device
    grids = tuple(m.make_grid(nx, ny, i, torch.float32, device) for i, (ny, nx) in enumerate(maps))
    strides = tuple(float(s) for s in m.stride)
    m.export_sizes = DetectExport(-1 if ctx.dynamic_batch else ctx.input_shapes[0][0], maps, strides, grids)


@register_block("Detect", kind=parse_detect, export=export_detect)
class Detect(nn.Module):
    """YOLOv5 detection head: per level 1x1 conv, then (eval) sigmoid and box decoding."""

    stride: torch.Tensor | None = None
    export_sizes: DetectExport | None = None

    def __init__(self, nc: int = 80, anchors: list | tuple = (), ch: list[int] | tuple = (), inplace: bool = True):
        super().__init__()
        self.nc = nc
        self.no = nc + 5
        self.nl = len(anchors)
        self.na = len(anchors[0]) // 2
        self.register_buffer("anchors", torch.tensor(anchors).float().view(self.nl, -1, 2))
        self.m = nn.ModuleList(nn.Conv2d(x, self.no * self.na, 1) for x in ch)
        self.inplace = inplace

    def forward(self, x: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        x = list(x)
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            exp = self.export_sizes
            bs, _, ny, nx = x[i].shape if exp is None else (exp.batch, 0, *exp.maps[i])
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if self.training:
                continue
            grid, anchor_grid = self.make_grid(nx, ny, i, x[i].dtype, x[i].device) if exp is None else exp.grids[i]
            stride = float(self.stride[i]) if exp is None else exp.strides[i]
            xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
            xy = (xy * 2 + grid) * stride
            wh = (wh * 2) ** 2 * anchor_grid
            z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return x if self.training else torch.cat(z, 1)

    def make_grid(
        self, nx: int, ny: int, i: int, dtype: torch.dtype, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Cell offsets (index - 0.5) and anchor sizes in pixels, shaped (1, na, ny, nx, 2)."""
        shape = 1, self.na, ny, nx, 2
        yv, xv = torch.meshgrid(
            torch.arange(ny, device=device, dtype=dtype), torch.arange(nx, device=device, dtype=dtype), indexing="ij"
        )
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * float(self.stride[i])).view((1, self.na, 1, 1, 2)).expand(shape).to(dtype)
        return grid, anchor_grid
