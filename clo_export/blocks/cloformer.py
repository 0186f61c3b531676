"""CloFormer's EfficientAttention (AttnConv) block, as pasted into YOLOv5's models/common.py.

The math is the seed's, line for line. Two additions: every reshape size is computed from
the module's own configuration (batch is the only free dimension), so an export with a fixed
input size carries no shape arithmetic; and a feature map that ``window_size`` does not divide
raises a clear error instead of PyTorch's reshape error.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from clo_export.errors import CloExportError
from clo_export.imgsz import window_error
from clo_export.registry import ExportContext, LayerContext, LayerSpec, register_block, register_class

DEFAULTS: dict[str, Any] = {"num_heads": 8, "group_split": [4, 4], "kernel_sizes": [5], "window_size": 4}
ARG_ORDER = ("num_heads", "group_split", "kernel_sizes", "window_size", "attn_drop", "proj_drop", "qkv_bias")


class SwishImplementation(torch.autograd.Function):
    """x * sigmoid(x) with a memory-saving backward (efficientnet_pytorch's)."""

    @staticmethod
    def forward(ctx: Any, i: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(i)
        return i * torch.sigmoid(i)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> torch.Tensor:
        (i,) = ctx.saved_tensors
        s = torch.sigmoid(i)
        return grad_output * (s * (1 + i * (1 - s)))


class MemoryEfficientSwish(nn.Module):
    """Swish through an autograd.Function; the export form is the identical ``x*sigmoid(x)``."""

    export_plain = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.export_plain:
            return x * torch.sigmoid(x)
        return SwishImplementation.apply(x)


class AttnMap(nn.Module):
    """1x1 conv, swish, 1x1 conv: the context-aware weights of the high-frequency path."""

    def __init__(self, dim: int):
        super().__init__()
        self.act_block = nn.Sequential(
            nn.Conv2d(dim, dim, 1, 1, 0), MemoryEfficientSwish(), nn.Conv2d(dim, dim, 1, 1, 0)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act_block(x)


def check_config(
    dim: int, num_heads: int, group_split: list[int], kernel_sizes: list[int], where: str = "EfficientAttention"
) -> None:
    """Refuse configurations the block cannot build, saying which number to change."""
    if num_heads <= 0 or dim % num_heads:
        raise CloExportError(
            f"{where}: dim {dim} is not divisible by num_heads {num_heads}; choose num_heads dividing {dim}"
        )
    if sum(group_split) != num_heads:
        raise CloExportError(
            f"{where}: group_split {group_split} sums to {sum(group_split)} but num_heads is {num_heads}; make them "
            f"agree"
        )
    if len(kernel_sizes) + 1 != len(group_split):
        raise CloExportError(
            f"{where}: {len(kernel_sizes)} kernel_sizes need {len(kernel_sizes) + 1} group_split entries "
            f"(one per kernel plus the global group), got {len(group_split)}"
        )


def parse_attention(ctx: LayerContext) -> LayerSpec:
    """``[]`` -> defaults; ``[num_heads, group_split, kernel_sizes, window_size]`` or a mapping override."""
    args = ctx.args
    mapping = args[0] if len(args) == 1 and isinstance(args[0], dict) else {}
    positional = [] if mapping else args
    if len(positional) > len(ARG_ORDER):
        raise CloExportError(
            f"layer {ctx.index} EfficientAttention: at most {len(ARG_ORDER)} arguments ({', '.join(ARG_ORDER)}), got "
            f"{len(positional)}"
        )
    kw = {**DEFAULTS, **dict(zip(ARG_ORDER, positional)), **mapping, **ctx.kwargs}
    unknown = set(kw) - set(ARG_ORDER)
    if unknown:
        raise CloExportError(
            f"layer {ctx.index} EfficientAttention: unknown arguments {sorted(unknown)}; known: {', '.join(ARG_ORDER)}"
        )
    check_config(
        ctx.c1, kw["num_heads"], kw["group_split"], kw["kernel_sizes"], f"layer {ctx.index} EfficientAttention"
    )
    return LayerSpec([ctx.c1], kw, ctx.c1, ctx.n)


def export_attention(m: "EfficientAttention", ctx: ExportContext) -> None:
    """Fix the input shape so every reshape size is a Python int (batch -1 when dynamic)."""
    m.export_shape = ctx.input_shape


@register_block(
    "EfficientAttention",
    kind=parse_attention,
    export=export_attention,
    hparams=("num_heads", "group_split", "kernel_sizes", "window_size"),
)
class EfficientAttention(nn.Module):
    """CloFormer AttnConv: high-frequency local attention groups plus one pooled global group."""

    export_shape: tuple[int, ...] | None = None
    in_stride: int | None = None

    def __init__(
        self,
        dim: int,
        num_heads: int,
        group_split: list[int],
        kernel_sizes: list[int],
        window_size: int = 7,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        qkv_bias: bool = True,
    ):
        super().__init__()
        check_config(dim, num_heads, group_split, kernel_sizes)
        self.dim = dim
        self.num_heads = num_heads
        self.dim_head = dim // num_heads
        self.scalor = self.dim_head**-0.5
        self.kernel_sizes = kernel_sizes
        self.window_size = window_size
        self.group_split = group_split
        convs, act_blocks, qkvs = [], [], []
        for kernel_size, group_head in zip(kernel_sizes, group_split):
            if group_head == 0:
                continue
            c = 3 * self.dim_head * group_head
            convs.append(nn.Conv2d(c, c, kernel_size, 1, kernel_size // 2, groups=c))
            act_blocks.append(AttnMap(self.dim_head * group_head))
            qkvs.append(nn.Conv2d(dim, c, 1, 1, 0, bias=qkv_bias))
        if group_split[-1] != 0:
            self.global_q = nn.Conv2d(dim, group_split[-1] * self.dim_head, 1, 1, 0, bias=qkv_bias)
            self.global_kv = nn.Conv2d(dim, group_split[-1] * self.dim_head * 2, 1, 1, 0, bias=qkv_bias)
            self.avgpool = nn.AvgPool2d(window_size, window_size) if window_size != 1 else nn.Identity()
        self.convs = nn.ModuleList(convs)
        self.act_blocks = nn.ModuleList(act_blocks)
        self.qkvs = nn.ModuleList(qkvs)
        self.proj = nn.Conv2d(dim, dim, 1, 1, 0, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj_drop = nn.Dropout(proj_drop)

    def size_multiple(self) -> int:
        """What the input feature map's height and width must be multiples of."""
        return self.window_size if self.group_split[-1] != 0 else 1

    def high_fre_attntion(
        self,
        x: torch.Tensor,
        shape: tuple[int, ...],
        group_head: int,
        to_qkv: nn.Module,
        mixer: nn.Module,
        attn_block: nn.Module,
    ) -> torch.Tensor:
        """Local attention: depthwise-mixed q, k, v; tanh(attn_map(q*k)) * v."""
        b, _, h, w = shape
        qkv = mixer(to_qkv(x)).reshape(b, 3, group_head * self.dim_head, h, w).transpose(0, 1).contiguous()
        q, k, v = qkv
        attn = attn_block(q.mul(k)).mul(self.scalor)
        attn = self.attn_drop(torch.tanh(attn))
        return attn.mul(v)

    def low_fre_attention(
        self, x: torch.Tensor, shape: tuple[int, ...], to_q: nn.Module, to_kv: nn.Module, avgpool: nn.Module
    ) -> torch.Tensor:
        """Global attention of every position against window-pooled keys and values."""
        b, _, h, w = shape
        m = self.group_split[-1]
        q = to_q(x).reshape(b, m, self.dim_head, h * w).transpose(-1, -2).contiguous()
        kv = (
            to_kv(avgpool(x))
            .view(b, 2, m, self.dim_head, (h * w) // (self.window_size**2))
            .permute(1, 0, 2, 4, 3)
            .contiguous()
        )
        k, v = kv
        attn = self.scalor * q @ k.transpose(-1, -2)
        attn = self.attn_drop(attn.softmax(dim=-1))
        res = attn @ v
        return res.transpose(2, 3).reshape(b, m * self.dim_head, h, w).contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape) if self.export_shape is None else self.export_shape
        h, w = shape[2], shape[3]
        ws = self.size_multiple()
        if h % ws or w % ws:
            raise window_error(getattr(self, "i", -1), type(self).__name__, (h, w), ws, self.in_stride)
        res = []
        heads = [g for g in self.group_split[:-1] if g != 0]
        for group_head, to_qkv, mixer, attn_block in zip(heads, self.qkvs, self.convs, self.act_blocks):
            res.append(self.high_fre_attntion(x, shape, group_head, to_qkv, mixer, attn_block))
        if self.group_split[-1] != 0:
            res.append(self.low_fre_attention(x, shape, self.global_q, self.global_kv, self.avgpool))
        return self.proj_drop(self.proj(torch.cat(res, dim=1)))


register_class(AttnMap)
register_class(MemoryEfficientSwish, "Swish")
register_block(
    "MemoryEfficientSwish", MemoryEfficientSwish, kind="plain", export=lambda m, ctx: setattr(m, "export_plain", True)
)
