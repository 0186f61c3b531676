"""PyTorch runner: a DetectionModel (checkpoint or export-mode copy) as the reference backend."""

from __future__ import annotations

import numpy as np

from clo_export.backends.base import Runner, TensorSpec


class TorchRunner(Runner):
    """Runs an eval-mode model on CPU or CUDA; input ``images``, output ``output0`` like our ONNX."""

    name = "pytorch"

    def __init__(self, model, device: str = "cpu", input_name: str = "images", output_name: str = "output0"):
        super().__init__()
        self.model = model
        self.device = device
        self.input_name = input_name
        self.output_name = output_name

    def activate_impl(self) -> None:
        self.model = self.model.to(self.device).eval()

    def deactivate_impl(self) -> None:
        pass

    def input_specs_impl(self) -> list[TensorSpec]:
        ch = self.model.yaml.get("ch", 3)
        return [TensorSpec(self.input_name, (None, ch, None, None), np.dtype(np.float32))]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        import torch

        x = torch.from_numpy(np.ascontiguousarray(feed[self.input_name], dtype=np.float32)).to(self.device)
        with torch.no_grad():
            y = self.model(x)
        return {self.output_name: y.float().cpu().numpy()}
