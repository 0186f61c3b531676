"""Our own exports of one small detector, made once per test process, for the pre-flight and Python-matrix tests.

FP32 and in-graph-NMS ONNX come from the clo-infer fixtures (seed architecture, 3 classes, 128x128),
plus the FP16 variant (what clo-export onnx --half writes), the Q/DQ INT8 one (clo-export quantize on
real images) and a dynamic-batch export.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from tests.helpers import IMGSZ, artifacts


@dataclass(frozen=True)
class Exports:
    fp32: Path
    nms: Path
    fp16: Path
    int8: Path
    dynamic: Path
    video: Path
    images: Path


@functools.lru_cache(maxsize=1)
def exports() -> Exports:
    import onnx

    from clo_export.artifacts import load_onnx
    from clo_export.engine.onnx_facts import make_fp16_onnx, onnx_facts
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load
    from clo_export.quantization.quantize import QuantizeOptions, quantize
    from tests.helpers import write_images

    art = artifacts()
    root = art.root / "trt"
    root.mkdir(exist_ok=True)
    fp32 = root / "m.onnx"
    fp32.write_bytes(art.onnx.read_bytes())
    fp16 = make_fp16_onnx(fp32, onnx_facts(load_onnx(fp32)))
    write_images(root / "calib", 16)
    int8 = quantize(
        fp32,
        root / "calib",
        root / "m.int8.onnx",
        QuantizeOptions(method="minmax", num=12, holdout=4, min_images=8, min_holdout=4, min_agreement=0),
    ).path
    dynamic = export_onnx(
        load(art.pt),
        root / "m_dyn.onnx",
        ExportOptions(imgsz=(IMGSZ, IMGSZ), simplifier="none", dynamic_batch=True, batch=2),
    ).path
    assert onnx.load(str(int8)).graph.node
    return Exports(fp32, art.nms_onnx, fp16, int8, dynamic, art.video, art.images)
