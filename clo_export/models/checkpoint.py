"""Load YOLOv5 checkpoints (training, stripped, bare state dict) and save them in YOLOv5's layout.

Loading never executes pickled code (see :mod:`clo_export.models.safe_pickle`). The pickled
model is only read for its config, class names and weights; the model that comes back is
rebuilt from our blocks and loaded with ``strict=True``, in FP32 and eval mode.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import logging
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from clo_export.blocks import load_plugins
from clo_export.errors import CloExportError
from clo_export.fileio import atomic_path, sha256_file
from clo_export.models.safe_pickle import SafePickleModule
from clo_export.models.yolo import DEFAULT_CFG, DetectionModel, load_cfg
from clo_export.registry import REGISTRY

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model ready for export: FP32, eval mode, unfused, with what was learnt about its source."""

    model: DetectionModel
    path: Path
    source_format: str
    sha256: str
    imgsz_hint: tuple[int, int] | None = None
    epoch: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> dict[int, str]:
        return self.model.names

    @property
    def nc(self) -> int:
        return self.model.nc

    def describe(self) -> str:
        """One line on what was loaded."""
        imgsz = f", trained at {self.imgsz_hint[0]}x{self.imgsz_hint[1]}" if self.imgsz_hint else ""
        return f"loaded {self.path.name}: {self.source_format}, nc={self.nc}, {len(self.names)} names{imgsz}"


def read_checkpoint(path: Path) -> Any:
    """Unpickle a checkpoint through the restricted unpickler."""
    if not path.is_file():
        raise CloExportError(f"checkpoint '{path}' does not exist; pass the path to your best.pt")
    try:
        return torch.load(
            path, map_location="cpu", pickle_module=SafePickleModule(path.stat().st_size), weights_only=False
        )
    except CloExportError:
        raise
    except Exception as e:
        raise CloExportError(
            f"'{path}' is not a readable PyTorch checkpoint "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
            "pass the best.pt/last.pt YOLOv5 wrote, or a state dict saved with torch.save"
        ) from e


def float_state_dict(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Floating-point tensors in FP32 (YOLOv5 stores FP16), others as they are."""
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v for k, v in sd.items()}


def hparam_overrides(pickled: nn.Module) -> dict[int, dict[str, Any]]:
    """Constructor arguments read off pickled layers (e.g. the window_size the user trained with)."""
    out: dict[int, dict[str, Any]] = {}
    for i, layer in enumerate(getattr(pickled, "model", [])):
        block = REGISTRY.block_for(layer)
        if block and block.hparams:
            values = {k: getattr(layer, k) for k in block.hparams if hasattr(layer, k)}
            if values:
                out[i] = values
    return out


def load_weights(model: DetectionModel, sd: dict[str, torch.Tensor], where: str) -> None:
    """``load_state_dict(strict=True)`` with a readable error."""
    sd = float_state_dict(sd)
    mismatched = [
        k for k, v in model.state_dict().items() if k in sd and torch.is_tensor(sd[k]) and sd[k].shape != v.shape
    ]
    missing = [k for k in model.state_dict() if k not in sd]
    unexpected = [k for k in sd if k not in model.state_dict()]
    if mismatched or missing or unexpected:
        parts = [
            f"{label} {keys[:3]}{'…' if len(keys) > 3 else ''}"
            for label, keys in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected))
            if keys
        ]
        raise CloExportError(
            f"weights in {where} do not fit the model built from its config: {'; '.join(parts)}. "
            "Pass --cfg with the YAML you trained with (explicit block args if you changed their defaults)"
        )
    model.load_state_dict(sd, strict=True)


def infer_nc(sd: dict[str, torch.Tensor], cfg: dict) -> int:
    """Class count from the Detect conv's output channels: na * (nc + 5)."""
    keys = [
        k
        for k in sd
        if k.endswith(".m.0.weight") and k.startswith(f"model.{len(cfg['backbone']) + len(cfg['head']) - 1}.")
    ]
    if not keys:
        return cfg["nc"]
    na = len(cfg["anchors"][0]) // 2 if isinstance(cfg["anchors"], list) else cfg["anchors"]
    return sd[keys[0]].shape[0] // na - 5


def imgsz_from_opt(opt: Any) -> tuple[int, int] | None:
    """Training image size from YOLOv5's ``opt`` (dict or Namespace), if present."""
    if isinstance(opt, argparse.Namespace):
        opt = vars(opt)
    if not isinstance(opt, dict):
        return None
    size = opt.get("imgsz", opt.get("img_size"))
    if isinstance(size, (list, tuple)) and size:
        size = size[0]
    return (int(size), int(size)) if isinstance(size, (int, np.integer)) else None


def from_yolov5(ckpt: dict, cfg: str | Path | None, path: Path) -> tuple[DetectionModel, str, list[str]]:
    """Rebuild a model from a YOLOv5 training/stripped checkpoint's pickled model."""
    pickled = ckpt.get("ema") or ckpt.get("model")
    stripped = ckpt.get("optimizer") is None and ckpt.get("ema") is None
    fmt = (
        "YOLOv5 stripped checkpoint"
        if stripped
        else "YOLOv5 training checkpoint" + (" (ema)" if ckpt.get("ema") else "")
    )
    notes = []
    yaml_cfg = load_cfg(cfg) if cfg else getattr(pickled, "yaml", None)
    if not isinstance(yaml_cfg, dict):
        raise CloExportError(f"'{path}' holds a model without its YOLOv5 config; pass --cfg your_model.yaml")
    names = getattr(pickled, "names", None)
    nc = getattr(pickled, "nc", None) or yaml_cfg["nc"]
    overrides = {} if cfg else hparam_overrides(pickled)
    model = DetectionModel(yaml_cfg, ch=yaml_cfg.get("ch", 3), nc=nc, names=names, overrides=overrides)
    load_weights(model, pickled.state_dict(), str(path))
    stride = getattr(pickled, "stride", None)
    if stride is not None and not torch.equal(torch.as_tensor(stride).float(), model.stride):
        notes.append(
            f"checkpoint stride {list(map(int, stride))} differs from the rebuilt {list(map(int, model.stride))}"
        )
    return model, fmt, notes


def from_state_dict(sd: dict, cfg: str | Path | None, path: Path) -> tuple[DetectionModel, str, list[str]]:
    """Build the config's model and load a bare state dict into it."""
    notes = []
    if cfg is None:
        notes.append(f"no --cfg given for a bare state dict; using the bundled {DEFAULT_CFG.name}")
    d = load_cfg(cfg or DEFAULT_CFG)
    nc = infer_nc(sd, d)
    model = DetectionModel(d, ch=d.get("ch", 3), nc=nc)
    load_weights(model, sd, str(path))
    return model, "state dict", notes


def load(path: str | Path, cfg: str | Path | None = None, plugins: tuple[str | Path, ...] = ()) -> LoadedModel:
    """Load a YOLOv5(+CloFormer) checkpoint or state dict as an FP32 eval model."""
    load_plugins(plugins)
    path = Path(path)
    ckpt = read_checkpoint(path)
    if isinstance(ckpt, dict) and isinstance(ckpt.get("ema") or ckpt.get("model"), nn.Module):
        model, fmt, notes = from_yolov5(ckpt, cfg, path)
    elif isinstance(ckpt, nn.Module):
        model, fmt, notes = from_yolov5({"model": ckpt}, cfg, path)
        fmt = "pickled model"
    elif isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict", ckpt.get("model")), dict):
        model, fmt, notes = from_state_dict(ckpt.get("state_dict", ckpt.get("model")), cfg, path)
    elif isinstance(ckpt, dict) and ckpt and all(torch.is_tensor(v) for v in ckpt.values()):
        model, fmt, notes = from_state_dict(ckpt, cfg, path)
    else:
        raise CloExportError(f"'{path}' is a pickle but not a YOLOv5 checkpoint or state dict; pass your best.pt")
    epoch = ckpt.get("epoch") if isinstance(ckpt, dict) else None
    opt = ckpt.get("opt") if isinstance(ckpt, dict) else None
    loaded = LoadedModel(model.float().eval(), path, fmt, sha256_file(path), imgsz_from_opt(opt), epoch, notes)
    log.info(loaded.describe())
    for note in notes:
        log.info(note)
    return loaded


YOLOV5_MODULES = {
    "models.common": ("Conv", "Bottleneck", "C3", "SPPF", "Concat"),
    "models.yolo": ("Detect", "DetectionModel"),
}
# Set on blocks while exporting (static shapes, plain swish); never part of a checkpoint.
EXPORT_ATTRIBUTES = ("export_sizes", "export_shape", "export_plain")


@contextlib.contextmanager
def pickled_as_yolov5(attention_module: str = "models.common") -> Iterator[None]:
    """Make our classes pickle under YOLOv5's module paths (stand-in modules in sys.modules).

    YOLOv5's own blocks go where YOLOv5 defines them; every other registered block
    (EfficientAttention, AttnMap, MemoryEfficientSwish, user plugins) goes to ``attention_module``,
    where the user pasted it. A clone resolves ``models.common.MemoryEfficientSwish`` whether the
    paste defines the class or imports it from efficientnet_pytorch, so that package is not needed.
    """
    core = {cls: mod for mod, names in YOLOV5_MODULES.items() for cls in names}
    mapping = {
        name: core.get(name, attention_module)
        for name, cls in REGISTRY.classes.items()
        if name == cls.__name__ and not cls.__module__.startswith("torch")
    }
    parents = {".".join(m.split(".")[:k]) for m in mapping.values() for k in range(1, m.count(".") + 2)}
    saved_modules = {m: sys.modules.get(m) for m in parents}
    saved_names = {}
    try:
        for mod in saved_modules:
            sys.modules[mod] = types.ModuleType(mod)
        for name, mod in mapping.items():
            cls = REGISTRY.classes[name]
            saved_names[cls] = cls.__module__
            setattr(sys.modules[mod], name, cls)
            cls.__module__ = mod
        yield
    finally:
        for cls, mod in saved_names.items():
            cls.__module__ = mod
        for mod, old in saved_modules.items():
            if old is None:
                sys.modules.pop(mod, None)
            else:
                sys.modules[mod] = old


def plain(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays turned into Python numbers and lists, recursively.

    YOLOv5 loads checkpoints with plain pickle: a NumPy scalar ties the file to the NumPy
    version that wrote it (numpy._core only exists from NumPy 2).
    """
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    return value


def as_yolov5_module(model: DetectionModel) -> DetectionModel:
    """An FP16, frozen, eval copy of ``model`` whose attributes are the ones YOLOv5's classes expect.

    YOLOv5's ``Detect.__init__`` sets ``grid``/``anchor_grid`` lists that its ``_apply`` and forward
    use; export-time attributes of ours are dropped; ``hyp`` and the like hold plain Python values.
    """
    half = copy.deepcopy(model).half().eval()
    for p in half.parameters():
        p.requires_grad = False
    for m in half.modules():
        for name in EXPORT_ATTRIBUTES:
            m.__dict__.pop(name, None)
    det = half.detect
    det.grid = [torch.empty(0) for _ in range(det.nl)]
    det.anchor_grid = [torch.empty(0) for _ in range(det.nl)]
    for name in ("hyp", "names", "class_weights"):
        if name in half.__dict__:
            setattr(half, name, plain(half.__dict__[name]))
    return half


def save_yolov5(
    model: DetectionModel,
    path: str | Path,
    layout: str = "stripped",
    epoch: int = 0,
    opt: dict | None = None,
    attention_module: str = "models.common",
    best_fitness: float | None = None,
) -> Path:
    """Write ``model`` as YOLOv5 does: pickled FP16 modules, stripped or training layout, atomically.

    The stripped layout is what YOLOv5's ``strip_optimizer`` leaves: ``best_fitness``, ``ema``,
    ``updates`` and ``optimizer`` None, ``epoch`` -1. Every value outside the tensors is plain
    Python, so an unmodified YOLOv5 clone (block pasted into models/common.py) loads the file.
    """
    if layout not in ("stripped", "training"):
        raise CloExportError(f"layout must be 'stripped' or 'training', got '{layout}'")
    half = as_yolov5_module(model)
    training = layout == "training"
    ckpt = {
        "epoch": epoch if training else -1,
        "best_fitness": plain(best_fitness) if training else None,
        "model": half,
        "ema": copy.deepcopy(half) if training else None,
        "updates": 0 if training else None,
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.01).state_dict() if training else None,
        "opt": plain(opt or {}),
        "git": None,
        "date": datetime.datetime.now().isoformat(),
    }
    path = Path(path)
    with pickled_as_yolov5(attention_module), atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path
