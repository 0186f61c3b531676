"""Run the FP32 model over the calibration feeds in ONNX Runtime (CPU) and collect activation ranges."""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from clo_export.errors import CloExportError
from clo_export.quantization.ranges import RangeCollector

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]  # (images done, images total)


def expose(model: onnx.ModelProto, tensors: list[str]) -> onnx.ModelProto:
    """A copy of ``model`` whose graph also outputs ``tensors`` (float32 activations to calibrate)."""
    out = copy.deepcopy(model)
    existing = {o.name for o in out.graph.output}
    out.graph.output.extend(
        helper.make_tensor_value_info(t, TensorProto.FLOAT, None) for t in tensors if t not in existing
    )
    return out


def calibrate(
    model: onnx.ModelProto,
    data: Iterable[dict[str, np.ndarray]],
    tensors: list[str],
    methods: Sequence[str],
    total: int | None = None,
    progress: Progress | None = None,
    threads: int | None = None,
) -> dict[str, dict[str, float]]:
    """amax per tensor for each of ``methods`` from one pass over ``data`` (the FP32 model, ONNX Runtime CPU)."""
    from clo_export.backends.onnxrt import OnnxRuntimeRunner

    collector = RangeCollector(tensors, histograms=any(m != "minmax" for m in methods))
    done = 0
    runner = OnnxRuntimeRunner(
        expose(model, tensors).SerializeToString(), providers=["CPUExecutionProvider"], threads=threads
    )
    with runner:
        for feed in data:
            collector.add(runner.infer(feed))
            done += len(next(iter(feed.values())))
            if progress:
                progress(done, total or done)
    if not collector.batches:
        raise CloExportError("no calibration image could be read; check the --calib source")
    log.debug("calibrated %d tensors on %d images (%s)", len(tensors), done, ", ".join(methods))
    return {m: collector.amaxes(m) for m in methods}
