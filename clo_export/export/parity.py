"""Parity of an exported ONNX with its PyTorch reference, on the same preprocessed inputs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np

from clo_export.artifacts import ModelMeta
from clo_export.backends.onnxrt import OnnxRuntimeRunner
from clo_export.backends.pytorch import TorchRunner
from clo_export.compare import Report
from clo_export.comparator import Comparator, Comparison, Thresholds
from clo_export.data.preprocess import preprocess_batch
from clo_export.data.files import read_images


def parity_batches(imgsz: tuple[int, int], batch_sizes: Iterable[int] = (1,), n_random: int = 2,
                   source: str | Path | None = None, limit: int = 8, seed: int = 0) -> list[np.ndarray]:
    """Random images (uniform noise, seeded) per batch size, plus real frames from ``source``."""
    rng = np.random.default_rng(seed)
    batches = [rng.random((b, 3, *imgsz), dtype=np.float32) for b in batch_sizes for _ in range(n_random)]
    if source is not None:
        frames = list(read_images(source, limit))
        batches += [preprocess_batch([f], imgsz)[0] for f in frames]
    return batches


def check_parity(onnx_model: bytes | str | Path, reference, batches: list[np.ndarray], meta: ModelMeta) -> Report:
    """Run ONNX Runtime (CPU) and the PyTorch reference on every batch; one accumulated Report."""
    comparison = Comparison(meta.precision or "fp32", Thresholds().for_model(meta))
    with OnnxRuntimeRunner(onnx_model, providers=["CPUExecutionProvider"]) as ort, TorchRunner(reference) as pt:
        name = ort.input_specs()[0].name
        return Comparator(pt, comparison).report(ort, ({name: x} for x in batches))
