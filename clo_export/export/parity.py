"""Parity of an exported ONNX with its PyTorch reference, on the same preprocessed inputs."""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from clo_export.artifacts import ModelMeta
from clo_export.backends.onnxrt import OnnxRuntimeRunner
from clo_export.backends.pytorch import TorchRunner
from clo_export.comparator import Comparator, Comparison, Thresholds, raw_head_runner
from clo_export.data.files import read_images
from clo_export.data.preprocess import preprocess_batch
from clo_export.report import Report

SAMPLE_FRAMES = Path(__file__).resolve().parent.parent / "assets" / "frames"  # tools/make_sample_frames.py


def parity_batches(
    imgsz: tuple[int, int],
    batch_sizes: Iterable[int] = (1,),
    n_random: int = 2,
    source: str | Path | None = None,
    limit: int = 8,
    seed: int = 0,
) -> list[np.ndarray]:
    """Random images (uniform noise, seeded) per batch size, plus real frames: ``source``'s or the bundled samples.

    Noise exercises every tensor but rarely makes a detection; the frames give detection parity
    boxes to compare (the bundled ones, demo-generator scenes, do for the bundled model). Frames go
    in batches of the first batch size, the last one filled up from the first frames.
    """
    sizes = list(batch_sizes)
    rng = np.random.default_rng(seed)
    batches = [rng.random((b, 3, *imgsz), dtype=np.float32) for b in sizes for _ in range(n_random)]
    frames = preprocess_batch(list(read_images(SAMPLE_FRAMES if source is None else source, limit)), imgsz)[0]
    b = sizes[0]
    for i in range(0, len(frames), b):
        batches.append(np.take(frames, range(i, i + b), axis=0, mode="wrap"))
    return batches


def check_parity(onnx_model: bytes | str | Path, reference, batches: list[np.ndarray], meta: ModelMeta) -> Report:
    """Run ONNX Runtime (CPU) and the PyTorch reference on every batch; one accumulated Report.

    A model with in-graph NMS is also compared on its raw head (the graph cut before NMS).
    """
    comparison = Comparison(meta.precision or "fp32", Thresholds().for_model(meta))
    raw = raw_head_runner(onnx_model) if meta.nms else None
    with OnnxRuntimeRunner(onnx_model, providers=["CPUExecutionProvider"]) as ort, TorchRunner(
        reference
    ) as pt, raw or nullcontext():
        name = ort.input_specs()[0].name
        return Comparator(pt, comparison, raw).report(ort, ({name: x} for x in batches))
