"""DetectionModel: a YOLOv5 model built from a YAML config with blocks from the registry.

Reproduces YOLOv5 v7.0's parse_model (depth/width rules, layer attributes ``i, f, type, np``,
the ``save`` list), stride from a forward pass, anchors in grid units with their order checked,
Detect bias initialisation and YOLOv5's BatchNorm settings, so a YOLOv5 state dict loads with
``strict=True``.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from clo_export.errors import CloExportError
from clo_export.imgsz import check_stride_multiple, window_error
from clo_export.registry import REGISTRY, LayerContext, register_class

log = logging.getLogger(__name__)

CFG_DIR = Path(__file__).resolve().parent.parent / "cfg"
DEFAULT_CFG = CFG_DIR / "yolov5n-cloformer.yaml"
STRIDE_PROBE = 256
_noted_wirings: set[str] = set()  # head-wiring notes already logged in this process


def load_cfg(cfg: str | Path | dict) -> dict:
    """A model config as a dict: a dict as given, a path, or the name of a bundled config."""
    if isinstance(cfg, dict):
        d = copy.deepcopy(cfg)
        validate_cfg(d, "(from the checkpoint)")
        return d
    path = Path(cfg)
    if not path.exists() and (CFG_DIR / path.name).exists():
        path = CFG_DIR / path.name
    if not path.is_file():
        bundled = ", ".join(p.name for p in sorted(CFG_DIR.glob("*.yaml")))
        raise CloExportError(f"model config '{cfg}' not found; pass a YAML path or a bundled config ({bundled})")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise CloExportError(f"model config '{path}' is not valid YAML: {e}") from e
    if not isinstance(d, dict) or "backbone" not in d or "head" not in d:
        raise CloExportError(f"model config '{path}' has no backbone/head lists; is it a YOLOv5 model YAML?")
    validate_cfg(d, str(path))
    return d


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def validate_cfg(d: dict, where: str) -> None:
    """Refuse a model dict that YOLOv5's parse_model could not build: one line naming the key and the fix."""

    def bad(what: str) -> CloExportError:
        return CloExportError(f"model config {where}: {what}; compare it with YOLOv5's models/yolov5n.yaml")

    for key in ("nc", "anchors", "backbone", "head"):
        if key not in d:
            raise bad(f"the '{key}' key is missing")
    if not isinstance(d["nc"], int) or isinstance(d["nc"], bool) or not 1 <= d["nc"] <= 100000:
        raise bad(f"nc must be a positive integer, got {d['nc']!r}")
    anchors = d["anchors"]
    if isinstance(anchors, int) and not isinstance(anchors, bool):
        if not 1 <= anchors <= 100:
            raise bad(f"anchors must be 1…100 per level or a list of [w, h, …] per level, got {anchors}")
    elif not (
        isinstance(anchors, list)
        and anchors
        and all(
            isinstance(level, list) and level and len(level) % 2 == 0 and all(_number(a) and a > 0 for a in level)
            for level in anchors
        )
    ):
        raise bad("anchors must be a list of [w0, h0, w1, h1, …] pixel sizes per detection level")
    for key in ("depth_multiple", "width_multiple"):
        if key in d and not (_number(d[key]) and 0 < d[key] <= 16):
            raise bad(f"{key} must be a number in (0, 16], got {d[key]!r}")
    for part in ("backbone", "head"):
        rows = d[part]
        if not isinstance(rows, list) or not rows:
            raise bad(f"'{part}' must be a non-empty list of [from, number, module, args] rows")
        for row in rows:
            if not isinstance(row, (list, tuple)) or len(row) != 4:
                raise bad(f"{part} row {row!r} is not [from, number, module, args]")
            f, n, name, args = row
            if not (isinstance(f, int) or (isinstance(f, list) and f and all(isinstance(x, int) for x in f))):
                raise bad(f"{part} row {row!r}: 'from' must be a layer index or a list of them")
            if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 1000:
                raise bad(f"{part} row {row!r}: 'number' must be a repeat count 1…1000")
            if not isinstance(name, str):
                raise bad(f"{part} row {row!r}: 'module' must be a block name")
            if args is not None and not isinstance(args, (list, dict)):
                raise bad(f"{part} row {row!r}: 'args' must be a list")


def resolve_arg(a: Any, nc: int, anchors: Any) -> Any:
    """YAML argument names YOLOv5 evaluates (nc, anchors, None); other strings stay strings."""
    if isinstance(a, str):
        return {"nc": nc, "anchors": anchors, "None": None, "True": True, "False": False}.get(a, a)
    return a


def head_wiring_notes(layers: list[list], n_backbone: int) -> list[str]:
    """Notes on head concats that take a head C3-style layer where stock YOLOv5 takes the lateral Conv."""
    notes = []
    for i, (f, _, name, _) in enumerate(layers):
        if name != "Concat" or i < n_backbone:
            continue
        for j in [f] if isinstance(f, int) else f:
            j = i + j if j < 0 else j
            if j >= n_backbone and j != i - 1 and layers[j][2] != "Conv":
                notes.append(
                    f"layer {i} concatenates layer {j} ({layers[j][2]}), as this config says; stock YOLOv5 "
                    f"takes the lateral Conv (layer {j + 1}) there. Checkpoints trained with this config need exactly "
                    f"this wiring."
                )
    return notes


def log_head_wiring(layers: list[list], n_backbone: int) -> None:
    """Log each of :func:`head_wiring_notes` once per process, not at every build of the same config."""
    for note in head_wiring_notes(layers, n_backbone):
        if note not in _noted_wirings:
            _noted_wirings.add(note)
            log.info(note)


def parse_model(
    d: dict, ch: int = 3, overrides: dict[int, dict[str, Any]] | None = None
) -> tuple[nn.Sequential, list[int]]:
    """Build the layer list from a YOLOv5 model dict (YOLOv5 v7.0 parse_model rules).

    ``overrides`` maps a layer index to constructor keyword arguments that replace the
    YAML's (used to rebuild a checkpoint with the hyperparameters it was trained with).
    """
    anchors, nc = d["anchors"], d["nc"]
    gd, gw = d.get("depth_multiple", 1.0), d.get("width_multiple", 1.0)
    rows = d["backbone"] + d["head"]
    chs = [ch]
    layers, save = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, (list, tuple)) or len(row) != 4:
            raise CloExportError(f"layer {i}: expected [from, number, module, args], got {row!r}")
        f, n, name, args = row
        block = REGISTRY.block(str(name), i)
        if isinstance(args, dict):
            args, kwargs = [], dict(args)
        else:
            args, kwargs = [resolve_arg(a, nc, anchors) for a in (args or [])], {}
        n_ = max(round(n * gd), 1) if n > 1 else n
        spec = block.parse(LayerContext(i, f, n_, args, kwargs, chs, gw, nc))
        spec.kwargs.update((overrides or {}).get(i, {}))
        try:
            m = (
                nn.Sequential(*(block.cls(*spec.args, **spec.kwargs) for _ in range(spec.n)))
                if spec.n > 1
                else block.cls(*spec.args, **spec.kwargs)
            )
        except CloExportError as e:
            raise CloExportError(f"layer {i} {name}: {e}") from e
        except (TypeError, ValueError, AssertionError) as e:
            raise CloExportError(
                f"layer {i} {name}{spec.args}: cannot be built ({e}); check its args in the YAML"
            ) from e
        m.i, m.f, m.type = i, f, str(name)
        m.np = sum(x.numel() for x in m.parameters())
        save.extend(x % i for x in ([f] if isinstance(f, int) else f) if x != -1)
        layers.append(m)
        if i == 0:
            chs = []
        chs.append(spec.c2)
    log_head_wiring(rows, len(d["backbone"]))
    return nn.Sequential(*layers), sorted(save)


class DetectionModel(nn.Module):
    """YOLOv5 DetectionModel: ``model`` (Sequential of layers), ``save``, ``yaml``, ``names``, ``stride``."""

    def __init__(
        self,
        cfg: str | Path | dict = DEFAULT_CFG,
        ch: int = 3,
        nc: int | None = None,
        names: list[str] | dict | None = None,
        overrides: dict[int, dict[str, Any]] | None = None,
    ):
        super().__init__()
        self.yaml = load_cfg(cfg)
        if nc is not None and nc != self.yaml["nc"]:
            log.info("overriding model.yaml nc=%s with nc=%s", self.yaml["nc"], nc)
            self.yaml["nc"] = nc
        self.yaml["ch"] = ch
        self.model, self.save = parse_model(self.yaml, ch, overrides)
        self.nc = self.yaml["nc"]
        self.names = normalize_names(names, self.nc)
        self.inplace = True
        self.stride = self._probe_strides(ch)
        initialize_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Run the layers; eval returns the decoded (batch, N, 5+nc), training the raw maps."""
        y: list[torch.Tensor | None] = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    @property
    def detect(self) -> nn.Module:
        """The Detect layer (always last)."""
        return self.model[-1]

    def _probe_strides(self, ch: int) -> torch.Tensor:
        """Forward at 256x256: record each layer's input stride, set Detect stride and anchors."""
        s = STRIDE_PROBE

        def record(m: nn.Module, args: tuple) -> None:
            t = args[0][0] if isinstance(args[0], list) else args[0]
            m.in_stride = s // t.shape[-2]

        hooks = [m.register_forward_pre_hook(record) for m in self.model]
        try:
            with torch.no_grad():
                self.train()
                outs = self.forward(torch.zeros(1, ch, s, s))
        finally:
            for h in hooks:
                h.remove()
        det = self.detect
        det.stride = torch.tensor([s / x.shape[-2] for x in outs])
        check_anchor_order(det)
        det.anchors /= det.stride.view(-1, 1, 1)
        initialize_biases(det)
        return det.stride

    @property
    def max_stride(self) -> int:
        """Largest output stride (32 for P3-P5 models)."""
        return int(self.stride.max())

    def windowed_blocks(self) -> list[tuple[nn.Module, int, int]]:
        """(module, input stride, map multiple) for every block that needs whole windows."""
        out = []
        for m in self.model.modules():
            multiple = m.size_multiple() if hasattr(m, "size_multiple") else 1
            stride = getattr(m, "in_stride", None)
            if multiple > 1 and stride:
                out.append((m, stride, multiple))
        return out

    def size_multiple(self) -> int:
        """What image height and width must be multiples of (stride and every window)."""
        return math.lcm(self.max_stride, *(s * k for _, s, k in self.windowed_blocks()))

    def check_imgsz(self, imgsz: tuple[int, int]) -> None:
        """Refuse an input size that the stride or a windowed block cannot take, before any work."""
        check_stride_multiple(imgsz, self.max_stride, self.size_multiple())
        for m, stride, multiple in self.windowed_blocks():
            hw = (imgsz[0] // stride, imgsz[1] // stride)
            if hw[0] % multiple or hw[1] % multiple:
                raise window_error(getattr(m, "i", -1), type(m).__name__, hw, multiple, stride)

    def fuse(self) -> "DetectionModel":
        """A copy with every Conv's BatchNorm folded into its convolution (YOLOv5's fuse); ``self`` is unchanged."""
        fused = copy.deepcopy(self)
        for m in fused.model.modules():
            if hasattr(m, "bn") and isinstance(getattr(m, "conv", None), nn.Conv2d):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, "bn")
        return fused


def normalize_names(names: list[str] | dict | None, nc: int) -> dict[int, str]:
    """Class names as {index: name}; YOLOv5 stores a list or a dict. Missing -> class0, class1…"""
    if names is None:
        return {i: f"class{i}" for i in range(nc)}
    if isinstance(names, dict):
        out = {int(k): str(v) for k, v in names.items()}
    else:
        out = {i: str(v) for i, v in enumerate(names)}
    if len(out) != nc:
        raise CloExportError(f"checkpoint has {len(out)} class names but the model has nc={nc}; fix names or nc")
    return out


def check_anchor_order(det: nn.Module) -> None:
    """Flip the anchors when their size order disagrees with the stride order (YOLOv5)."""
    a = det.anchors.prod(-1).mean(-1).view(-1)
    da, ds = a[-1] - a[0], det.stride[-1] - det.stride[0]
    if da and da.sign() != ds.sign():
        log.info("reversing anchor order to match strides")
        det.anchors[:] = det.anchors.flip(0)


def initialize_biases(det: nn.Module) -> None:
    """Detect bias priors: objectness for 8 objects per 640 image, uniform class prior."""
    with torch.no_grad():
        for mi, s in zip(det.m, det.stride.tolist()):
            b = mi.bias.view(det.na, -1)  # a view: the in-place adds land in the parameter
            b[:, 4] += math.log(8 / (640 / s) ** 2)
            b[:, 5 : 5 + det.nc] += math.log(0.6 / (det.nc - 0.99999))


def initialize_weights(model: nn.Module) -> None:
    """YOLOv5's init: BatchNorm eps=1e-3, momentum=0.03; activations in place."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 1e-3
            m.momentum = 0.03
        elif isinstance(m, (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU)):
            m.inplace = True


@torch.no_grad()
def fuse_conv_and_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """A Conv2d with bias equal to ``bn(conv(x))`` in eval mode (leaf weights, no autograd history)."""
    fused = (
        nn.Conv2d(
            conv.in_channels,
            conv.out_channels,
            conv.kernel_size,
            conv.stride,
            conv.padding,
            dilation=conv.dilation,
            groups=conv.groups,
            bias=True,
        )
        .requires_grad_(False)
        .to(conv.weight.device)
    )
    w_conv = conv.weight.clone().view(conv.out_channels, -1)
    w_bn = torch.diag(bn.weight.div(torch.sqrt(bn.eps + bn.running_var)))
    fused.weight.copy_(torch.mm(w_bn, w_conv).view(fused.weight.shape))
    b_conv = torch.zeros(conv.weight.size(0), device=conv.weight.device) if conv.bias is None else conv.bias
    b_bn = bn.bias - bn.weight.mul(bn.running_mean).div(torch.sqrt(bn.running_var + bn.eps))
    fused.bias.copy_(torch.mm(w_bn, b_conv.reshape(-1, 1)).reshape(-1) + b_bn)
    return fused


register_class(DetectionModel, "Model")
