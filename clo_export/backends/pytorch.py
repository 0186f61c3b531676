"""PyTorch runner: a DetectionModel (checkpoint or export-mode copy) as the reference backend."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from clo_export.artifacts import ModelInfo
from clo_export.backends.base import Runner, TensorSpec
from clo_export.backends.device import device_index
from clo_export.errors import CloExportError

if TYPE_CHECKING:
    from clo_export.models.checkpoint import LoadedModel


def resolve_device(device: str | None) -> str:
    """None -> cuda:0 when torch sees a GPU, else cpu; a requested CUDA device must exist."""
    import torch

    if device is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if device_index(device) is not None and not torch.cuda.is_available():
        raise CloExportError(f"--device {device} asked for, but this torch build sees no CUDA GPU; use --device cpu")
    return device


class TorchRunner(Runner):
    """Runs an eval-mode model on CPU or CUDA; input ``images``, output ``output0`` like our ONNX.

    ``fuse=True`` folds BatchNorm into a copy at activate (faster; the reference for checks stays unfused).
    """

    name = "pytorch"
    any_batch = True

    def __init__(
        self,
        model,
        device: str | None = "cpu",
        input_name: str = "images",
        output_name: str = "output0",
        fuse: bool = False,
    ):
        super().__init__()
        self.model = model
        self.device = device
        self.input_name = input_name
        self.output_name = output_name
        self.fuse = fuse
        self._active = None

    def activate_impl(self) -> None:
        self.device = resolve_device(self.device)
        model = self.model.fuse() if self.fuse else self.model
        self._active = model.to(self.device).eval()

    def deactivate_impl(self) -> None:
        self._active = None

    def input_specs_impl(self) -> list[TensorSpec]:
        ch = self.model.yaml.get("ch", 3)
        return [TensorSpec(self.input_name, (None, ch, None, None), np.dtype(np.float32))]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(feed[self.input_name], dtype=np.float32)).to(self.device)
        with torch.no_grad():
            y = self._active(x)
        return {self.output_name: y.float().cpu().numpy()}


def load_checkpoint(weights: Path, imgsz: tuple[int, int] | None = None) -> tuple[LoadedModel, ModelInfo]:
    """A checkpoint and its ModelInfo at ``imgsz``, else at its training size (:func:`resolve_imgsz` logs which)."""
    from clo_export.lazy import lazy_import

    lazy_import("torch")  # a runtime-only install gets the install hint, not an ImportError
    from clo_export.imgsz import check_memory, resolve_imgsz
    from clo_export.models.checkpoint import load

    loaded = load(weights)
    size = resolve_imgsz(Path(weights).name, loaded.imgsz_hint, imgsz)
    loaded.model.check_imgsz(size)
    check_memory(loaded.model, size, 1, factor=2)  # an --imgsz that cannot fit: refused before a frame is allocated
    return loaded, ModelInfo(str(weights), "pytorch", dict(loaded.names), size, loaded.model.max_stride, "fp32")


def load_reference(weights: Path, imgsz: tuple[int, int] | None = None) -> tuple[TorchRunner, ModelInfo]:
    """A checkpoint as an (inactive) CPU TorchRunner for checks, and its ModelInfo (the contract to check against)."""
    loaded, info = load_checkpoint(weights, imgsz)
    return TorchRunner(loaded.model, "cpu"), info
