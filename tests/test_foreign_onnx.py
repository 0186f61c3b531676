"""ONNX files written by YOLOv5's export.py (static, --dynamic, --half) work or fail clearly.

The files are made the way export.py makes them (tests/yolov5_standin.py: attempt_load of our
checkpoint in a stand-in clone, Detect in export mode, the TorchScript exporter with constant folding
and nothing else), so the graph keeps what onnxsim would fold, e.g. the attention's ``.mul(scalor)``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from clo_export.artifacts import load_onnx, read_metadata
from clo_export.backends.select import load_runner
from clo_export.data.preprocess import preprocess_batch
from clo_export.demo.run import BUNDLED_MODEL
from clo_export.demo.shapes import make_video_frames
from clo_export.engine.build import dry_run
from clo_export.engine.onnx_facts import onnx_facts
from clo_export.engine.plan import BuildRequest
from clo_export.errors import CloExportError
from clo_export.quantization.graph import attention_nodes, find_targets
from clo_export.quantization.quantize import check_input
from tests import yolov5_standin

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled demo model not built")
IMGSZ = (256, 256)  # at 128 the pooled attention map is 1x1 and simplifiers fold its softmax away


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict[str, Path]:
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load

    d = tmp_path_factory.mktemp("yolov5-onnx")
    out = {
        kind: yolov5_standin.export_onnx(BUNDLED_MODEL, d / f"{kind}.onnx", IMGSZ, **kw)
        for kind, kw in (("static", {}), ("dynamic", {"dynamic": True}), ("half", {"half": True}))
    }
    out["ours"] = export_onnx(load(BUNDLED_MODEL), d / "ours.onnx", ExportOptions(imgsz=IMGSZ)).path
    return out


def test_yolov5_graph_and_ours_get_the_same_qdq_placement(exports):
    ours, theirs = onnx.load(str(exports["ours"])), onnx.load(str(exports["static"]))
    assert "/model.9/Mul_1" in attention_nodes(theirs)  # the .mul(scalor) our simplifier folds away
    placement = [
        {(t.node, t.index, t.weight, t.attention) for t in find_targets(m, keep_attention_fp=False)}
        for m in (ours, theirs)
    ]
    assert placement[0] == placement[1]
    kept_float = {t for t in placement[1] if t[3]}
    assert {t[0] for t in kept_float} == {
        "/model.9/MatMul",
        "/model.9/MatMul_1",
        "/model.9/act_blocks.0/act_block/act_block.0/Conv",
        "/model.9/act_blocks.0/act_block/act_block.2/Conv",
    }


def detections(path: Path, imgsz=None) -> np.ndarray:
    x = preprocess_batch([f.image for f in make_video_frames(4, 1, (480, 640))], IMGSZ)[0]
    runner, info = load_runner(path, "cpu", imgsz=imgsz)
    assert info.imgsz == IMGSZ
    with runner:
        return runner.infer({"images": x})["output0"]


def test_a_dynamic_onnx_needs_imgsz_and_then_matches_the_static_one(exports):
    with pytest.raises(CloExportError, match=r"no fixed input size.*pass --imgsz H,W"):
        load_runner(exports["dynamic"], "cpu")
    np.testing.assert_allclose(
        detections(exports["dynamic"], IMGSZ), detections(exports["static"]), atol=1e-3, rtol=1e-5
    )
    with pytest.raises(CloExportError, match="takes 256x256 inputs only"):
        load_runner(exports["static"], "cpu", imgsz=(320, 320))


def test_quantize_and_trt_refuse_what_they_cannot_take_in_one_line(exports):
    for kind, pattern in (
        ("dynamic", r"no fixed input size \(a --dynamic export\)"),
        ("half", "is fp16; quantize the FP32 ONNX"),
    ):
        model = onnx.load(str(exports[kind]))
        with pytest.raises(CloExportError, match=pattern) as e:
            check_input(model, read_metadata(model), exports[kind])
        assert "\n" not in str(e.value)
    with pytest.raises(CloExportError, match="dynamic input height/width"):
        dry_run(exports["dynamic"], BuildRequest(), "8.5")
    assert read_metadata(exports["half"]).precision == "fp16" and read_onnx_facts(exports["half"]).is_fp16
    assert read_onnx_facts(exports["static"]).imgsz == IMGSZ
    for kind in ("static", "half"):  # trt --dry-run takes YOLOv5's fixed-size exports
        assert dry_run(exports[kind], BuildRequest(precision="fp16"), "10.3"), kind


def read_onnx_facts(path: Path):
    return onnx_facts(load_onnx(path), path.name)
