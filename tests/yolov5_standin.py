"""A stand-in for an unmodified ultralytics/yolov5 clone with the seed's block pasted into models/common.py.

Written from YOLOv5's master source (models/common.py, models/yolo.py, models/experimental.py
``attempt_load``, utils/torch_utils.py ``fuse_conv_and_bn``, export.py's Detect settings): only
the code paths that loading, ``.float()``, ``fuse()`` and the export-mode forward run. The pasted
block is tests/seed_reference.py (the seed, verbatim). Unpickling resolves classes from these two
modules alone and refuses every module a clone would not have (``clo_export``,
``efficientnet_pytorch``, ``numpy``: YOLOv5 loads with plain pickle, so a NumPy scalar ties a
checkpoint to the NumPy version that wrote it).
"""

from __future__ import annotations

import _compat_pickle
import pickle
import types
from pathlib import Path

import torch
from torch import nn

from tests import seed_reference

# Modules an unpickler in a YOLOv5 clone can import besides models.*, as top-level packages.
CLONE_IMPORTABLE = ("torch", "collections", "builtins", "copyreg", "_codecs", "argparse", "pathlib", "datetime")


def autopad(k, p=None, d=1):
    if d > 1:
        k = d * (k - 1) + 1 if isinstance(k, int) else [d * (x - 1) + 1 for x in k]
    if p is None:
        p = k // 2 if isinstance(k, int) else [x // 2 for x in k]
    return p


class Conv(nn.Module):
    default_act = nn.SiLU()

    def __init__(self, c1, c2, k=1, s=1, p=None, g=1, d=1, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, autopad(k, p, d), groups=g, dilation=d, bias=False)
        self.bn = nn.BatchNorm2d(c2)
        self.act = self.default_act if act is True else act if isinstance(act, nn.Module) else nn.Identity()

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))

    def forward_fuse(self, x):
        return self.act(self.conv(x))


class DWConv(Conv):
    pass


class Bottleneck(nn.Module):
    def forward(self, x):
        return x + self.cv2(self.cv1(x)) if self.add else self.cv2(self.cv1(x))


class C3(nn.Module):
    def forward(self, x):
        return self.cv3(torch.cat((self.m(self.cv1(x)), self.cv2(x)), 1))


class SPPF(nn.Module):
    def forward(self, x):
        x = self.cv1(x)
        y1 = self.m(x)
        y2 = self.m(y1)
        return self.cv2(torch.cat((x, y1, y2, self.m(y2)), 1))


class Concat(nn.Module):
    def forward(self, x):
        return torch.cat(x, self.d)


class Detect(nn.Module):
    stride = None
    dynamic = False
    export = False

    def forward(self, x):
        z = []
        for i in range(self.nl):
            x[i] = self.m[i](x[i])
            bs, _, ny, nx = x[i].shape
            x[i] = x[i].view(bs, self.na, self.no, ny, nx).permute(0, 1, 3, 4, 2).contiguous()
            if not self.training:
                if self.dynamic or self.grid[i].shape[2:4] != x[i].shape[2:4]:
                    self.grid[i], self.anchor_grid[i] = self._make_grid(nx, ny, i)
                xy, wh, conf = x[i].sigmoid().split((2, 2, self.nc + 1), 4)
                xy = (xy * 2 + self.grid[i]) * self.stride[i]
                wh = (wh * 2) ** 2 * self.anchor_grid[i]
                z.append(torch.cat((xy, wh, conf), 4).view(bs, self.na * nx * ny, self.no))
        return x if self.training else (torch.cat(z, 1),) if self.export else (torch.cat(z, 1), x)

    def _make_grid(self, nx=20, ny=20, i=0):
        d, t = self.anchors[i].device, self.anchors[i].dtype
        shape = 1, self.na, ny, nx, 2
        yv, xv = torch.meshgrid(torch.arange(ny, device=d, dtype=t), torch.arange(nx, device=d, dtype=t), indexing="ij")
        grid = torch.stack((xv, yv), 2).expand(shape) - 0.5
        anchor_grid = (self.anchors[i] * self.stride[i]).view((1, self.na, 1, 1, 2)).expand(shape)
        return grid, anchor_grid


def fuse_conv_and_bn(conv, bn):
    fused = nn.Conv2d(
        conv.in_channels,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        dilation=conv.dilation,
        groups=conv.groups,
        bias=True,
    ).requires_grad_(False)
    w_conv = conv.weight.clone().view(conv.out_channels, -1)
    w_bn = torch.diag(bn.weight.div(torch.sqrt(bn.eps + bn.running_var)))
    fused.weight.copy_(torch.mm(w_bn, w_conv).view(fused.weight.shape))
    b_conv = torch.zeros(conv.weight.size(0)) if conv.bias is None else conv.bias
    b_bn = bn.bias - bn.weight.mul(bn.running_mean).div(torch.sqrt(bn.running_var + bn.eps))
    fused.bias.copy_(torch.mm(w_bn, b_conv.reshape(-1, 1)).reshape(-1) + b_bn)
    return fused


class BaseModel(nn.Module):
    def forward(self, x, profile=False):
        return self._forward_once(x)

    def _forward_once(self, x):
        y = []
        for m in self.model:
            if m.f != -1:
                x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
            x = m(x)
            y.append(x if m.i in self.save else None)
        return x

    def fuse(self):
        for m in self.model.modules():
            if isinstance(m, (Conv, DWConv)) and hasattr(m, "bn"):
                m.conv = fuse_conv_and_bn(m.conv, m.bn)
                delattr(m, "bn")
                m.forward = m.forward_fuse
        self.info()
        return self

    def info(self):
        # YOLOv5's model_info: parameter and gradient counts (its thop GFLOPs step is in a try/except)
        return sum(x.numel() for x in self.parameters()), sum(x.numel() for x in self.parameters() if x.requires_grad)

    def _apply(self, fn):
        super()._apply(fn)
        m = self.model[-1]
        if isinstance(m, Detect):
            m.stride = fn(m.stride)
            m.grid = list(map(fn, m.grid))
            if isinstance(m.anchor_grid, list):
                m.anchor_grid = list(map(fn, m.anchor_grid))
        return self


class DetectionModel(BaseModel):
    def forward(self, x, augment=False, profile=False):
        return self._forward_once(x)


def _module(name: str, **members) -> types.ModuleType:
    mod = types.ModuleType(name)
    for k, v in members.items():
        setattr(mod, k, v)
    return mod


COMMON = _module(
    "models.common",
    autopad=autopad,
    Conv=Conv,
    DWConv=DWConv,
    Bottleneck=Bottleneck,
    C3=C3,
    SPPF=SPPF,
    Concat=Concat,
    MemoryEfficientSwish=seed_reference.MemoryEfficientSwish,
    AttnMap=seed_reference.AttnMap,
    EfficientAttention=seed_reference.EfficientAttention,
)
YOLO = _module("models.yolo", Detect=Detect, BaseModel=BaseModel, DetectionModel=DetectionModel, Model=DetectionModel)
CLONE_MODULES = {"models.common": COMMON, "models.yolo": YOLO}


class CloneUnpickler(pickle.Unpickler):
    """Resolves what a YOLOv5 clone can import; anything else fails as it would there."""

    def find_class(self, module, name):
        if module in CLONE_MODULES:
            if not hasattr(CLONE_MODULES[module], name):
                raise AttributeError(f"Can't get attribute '{name}' on <module '{module}'>")
            return getattr(CLONE_MODULES[module], name)
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)  # protocol-2 spelling, as pickle maps it
        if module.split(".")[0] not in CLONE_IMPORTABLE:
            raise ModuleNotFoundError(f"No module named '{module}'")
        return super().find_class(module, name)


class ClonePickle:
    __name__ = "yolov5_clone_pickle"
    Unpickler = CloneUnpickler

    @staticmethod
    def load(file, **kwargs):
        return CloneUnpickler(file, **kwargs).load()


def attempt_load(weights: str | Path, inplace: bool = True, fuse: bool = True) -> nn.Module:
    """YOLOv5's attempt_load for one file: load, FP32, compatibility updates, fuse, eval, module updates."""
    ckpt = torch.load(weights, map_location="cpu", weights_only=False, pickle_module=ClonePickle)
    ckpt = (ckpt.get("ema") or ckpt["model"]).to(None).float()
    if not hasattr(ckpt, "stride"):
        ckpt.stride = torch.tensor([32.0])
    if hasattr(ckpt, "names") and isinstance(ckpt.names, (list, tuple)):
        ckpt.names = dict(enumerate(ckpt.names))
    model = ckpt.fuse().eval() if fuse and hasattr(ckpt, "fuse") else ckpt.eval()
    for m in model.modules():
        t = type(m)
        if t in (nn.Hardswish, nn.LeakyReLU, nn.ReLU, nn.ReLU6, nn.SiLU, YOLO.Detect, YOLO.DetectionModel):
            m.inplace = inplace
            if t is YOLO.Detect and not isinstance(m.anchor_grid, list):
                delattr(m, "anchor_grid")
                m.anchor_grid = [torch.zeros(1)] * m.nl
        elif t is nn.Upsample and not hasattr(m, "recompute_scale_factor"):
            m.recompute_scale_factor = None
    return model


def export_forward(model: nn.Module, im: torch.Tensor, dynamic: bool = False) -> torch.Tensor:
    """export.py's model update and dry runs: Detect in export mode, the (bs, N, 5+nc) output."""
    model.eval()
    for m in model.modules():
        if isinstance(m, YOLO.Detect):
            m.inplace, m.dynamic, m.export = True, dynamic, True
    with torch.no_grad():
        for _ in range(2):
            y = model(im)
    return y[0]


def export_onnx(
    weights: str | Path,
    out: Path,
    imgsz: tuple[int, int],
    dynamic: bool = False,
    simplify: bool = False,
    half: bool = False,
    opset: int = 17,
) -> Path:
    """export.py's ONNX path: attempt_load, Detect in export mode, dry runs, TorchScript exporter with
    constant folding and no other simplification (onnxslim with ``simplify``), then stride/names metadata.

    ``half`` casts model and input to FP16 before the export, as export.py --half does (on a GPU there).
    """
    import onnx

    model = attempt_load(weights)
    im = torch.zeros(1, 3, *imgsz)
    export_forward(model, im, dynamic)
    if half:
        im, model = im.half(), model.half()
    axes = {"images": {0: "batch", 2: "height", 3: "width"}, "output0": {0: "batch", 1: "anchors"}} if dynamic else None
    torch.onnx.export(
        model,
        im,
        str(out),
        verbose=False,
        opset_version=opset,
        do_constant_folding=True,
        input_names=["images"],
        output_names=["output0"],
        dynamic_axes=axes,
        dynamo=False,
    )
    proto = onnx.load(str(out))
    onnx.checker.check_model(proto)
    if simplify:
        import onnxslim

        proto = onnxslim.slim(proto)
    for k, v in {"stride": int(max(model.stride)), "names": model.names}.items():
        meta = proto.metadata_props.add()
        meta.key, meta.value = k, str(v)
    onnx.save(proto, str(out))
    return out
