"""clo-export onnx: static and dynamic-batch exports match PyTorch; bad inputs write nothing."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from clo_export.artifacts import read_metadata
from clo_export.cli.main import app
from clo_export.errors import CloExportError
from clo_export.export.exporter import ExportOptions, export_onnx
from clo_export.export.lint import lint
from clo_export.export.parity import parity_batches
from clo_export.models.checkpoint import load

runner = CliRunner()


@pytest.fixture(scope="module")
def loaded(small_model, tmp_path_factory):
    """The small model made to detect boxes on the bundled sample frames (parity with no boxes is inconclusive)."""
    import copy

    import torch

    from clo_export.models.checkpoint import save_yolov5
    from tests.untrained import follow_the_image

    model = copy.deepcopy(small_model)
    follow_the_image(model, torch.from_numpy(np.concatenate(parity_batches((256, 256), n_random=0))), 2.5, 1.0)
    return load(save_yolov5(model, tmp_path_factory.mktemp("detecting") / "small.pt", opt={"imgsz": 256}))


def export(loaded, tmp_path, sizes=(1,), **kw):
    opts = ExportOptions(**{"imgsz": (256, 256), **kw})
    return export_onnx(loaded, tmp_path / "m.onnx", opts, parity_batches(opts.imgsz, sizes))


@pytest.mark.parametrize(
    "kw,sizes",
    [
        ({}, (1,)),
        ({"imgsz": (256, 384)}, (1,)),
        ({"dynamic_batch": True}, (1, 3)),
        ({"batch": 2}, (2,)),
        # the simplifier and opset variants run in the full tier only (make test)
        pytest.param({"simplifier": "onnxslim"}, (1,), marks=pytest.mark.slow),
        pytest.param({"simplifier": "none"}, (1,), marks=pytest.mark.slow),
        pytest.param({"opset": 13}, (1,), marks=pytest.mark.slow),
        pytest.param({"opset": 20}, (1,), marks=pytest.mark.slow),
    ],
)
def test_fp32_export_matches_pytorch(loaded, tmp_path, kw, sizes):
    result = export(loaded, tmp_path, sizes, **kw)
    report = result.parity
    assert report, report.failures
    assert report.tensors["output0.boxes"].max_abs <= 1e-3 and report.tensors["output0.objectness"].max_abs <= 1e-5
    assert report.detections.f1 >= 0.999
    proto = onnx.load(result.path)
    assert next(o.version for o in proto.opset_import if o.domain == "") == result.meta.opset
    assert lint(proto) == []
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    h, w = kw.get("imgsz", (256, 256))
    assert [d.dim_value for d in dims[1:]] == [3, h, w]
    assert (dims[0].dim_param == "batch") if kw.get("dynamic_batch") else dims[0].dim_value == kw.get("batch", 1)
    assert [o.name for o in proto.graph.output] == ["output0"]


@pytest.mark.slow
def test_dynamo_exporter_above_opset_20(loaded, tmp_path):
    pytest.importorskip("onnxscript")
    result = export(loaded, tmp_path, (1, 3), opset=21, dynamic_batch=True)
    assert result.parity, result.parity.failures
    assert result.meta.opset == 21


def test_metadata_and_sidecar_round_trip(loaded, tmp_path):
    result = export(loaded, tmp_path)
    meta = read_metadata(result.path)
    assert meta.names == {0: "circle", 1: "square", 2: "star"} and meta.stride == 32 and meta.imgsz == (256, 256)
    assert meta.nc == 3 and meta.precision == "fp32" and meta.source_sha256 == loaded.sha256 and meta.opset == 17
    assert meta.anchors[0] == [10, 13, 16, 30, 33, 23]
    props = {p.key: p.value for p in onnx.load(result.path).metadata_props}
    assert props["names"] == "{0: 'circle', 1: 'square', 2: 'star'}" and props["stride"] == "32"  # YOLOv5's own format
    side = json.loads(result.sidecar.read_text())
    assert side["imgsz"] == [256, 256] and side["parity"]["passed"] is True and side["onnx"] == "m.onnx"


def test_half_export_keeps_softmax_fp32_and_matches_within_fp16_tolerance(loaded, tmp_path):
    result = export(loaded, tmp_path, half=True)
    assert result.parity, result.parity.failures
    assert result.path.name == "m.onnx" and result.meta.precision == "fp16"
    proto = onnx.load(result.path)
    assert proto.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT16
    types = {vi.name: vi.type.tensor_type.elem_type for vi in onnx.shape_inference.infer_shapes(proto).graph.value_info}
    softmax = next(n for n in proto.graph.node if n.op_type == "Softmax")
    assert types[softmax.output[0]] == onnx.TensorProto.FLOAT


def test_nms_export_matches_numpy_nms(loaded, tmp_path):
    result = export(loaded, tmp_path, nms=True, max_det=100)
    assert result.parity, result.parity.failures
    names = [o.name for o in onnx.load(result.path).graph.output]
    assert names == ["num_dets", "boxes", "scores", "classes"]
    assert read_metadata(result.path).nms_max_det == 100


def test_out_of_tolerance_is_reported(loaded, tmp_path):
    """A reference that differs from the graph must fail the check (the check can fail)."""
    from clo_export.export.parity import check_parity

    result = export(loaded, tmp_path)
    with np.errstate(all="ignore"):
        import torch

        with torch.no_grad():
            result.reference.detect.m[0].bias += 0.5
    report = check_parity(result.path, result.reference, parity_batches((256, 256)), result.meta)
    assert not report and any("output0" in f for f in report.failures)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, True])
def test_seed_model_at_640(seed_cfg, tmp_path, dynamic):
    from clo_export.models.checkpoint import save_yolov5
    from clo_export.models.yolo import DetectionModel

    path = save_yolov5(DetectionModel(seed_cfg).eval(), tmp_path / "seed.pt")
    opts = ExportOptions(imgsz=(640, 640), dynamic_batch=dynamic)
    result = export_onnx(
        load(path), tmp_path / "seed.onnx", opts, parity_batches((640, 640), (1, 2) if dynamic else (1,), n_random=1)
    )
    assert result.parity.failures == []  # tensors agree; an untrained model's detections may leave it inconclusive
    assert result.parity.tensors["output0.boxes"].shape[1] == 25200


@pytest.mark.parametrize(
    "args,message",
    [
        (["--imgsz", "500"], "not a multiple of the model stride 32"),
        (["--imgsz", "480,640"], "layer 9 EfficientAttention: its 15x20 feature map is not divisible by window_size 4"),
        (["--opset", "9"], "--opset 9 is out of range"),
        (["--simplifier", "magic"], "--simplifier magic is unknown"),
    ],
)
def test_bad_options_are_one_line_errors_and_write_nothing(small_ckpt, tmp_path, args, message):
    out = tmp_path / "x.onnx"
    result = runner.invoke(app, ["onnx", str(small_ckpt), "-o", str(out), *args])
    assert result.exit_code == 1 and message in result.output
    assert list(tmp_path.iterdir()) == []


def test_bad_files_are_one_line_errors(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    for path, message in ((tmp_path / "none.pt", "does not exist"), (junk, "is not a readable PyTorch checkpoint")):
        result = runner.invoke(app, ["onnx", str(path), "-o", str(tmp_path / "x.onnx")])
        assert result.exit_code == 1 and message in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["junk.pt"]


def test_cli_export_prints_parity_and_replaces_output_only_on_success(loaded, tmp_path):
    import shutil

    from clo_export.export.parity import SAMPLE_FRAMES

    frame = shutil.copy(SAMPLE_FRAMES / "sample_0.jpg", tmp_path / "frame.jpg")
    out = tmp_path / "best.onnx"
    result = runner.invoke(app, ["onnx", str(loaded.path), "--imgsz", "256", "-o", str(out), "--source", str(frame)])
    assert result.exit_code == 0, result.output
    assert "output0.boxes" in result.output and "parity: within tolerance" in result.output
    assert "(fp32, 3 frames)" in result.output  # 2 noise inputs + the one --source frame
    assert "onnxsim" in result.output and out.is_file() and (tmp_path / "best.onnx.json").is_file()
    before = out.read_bytes()
    result = runner.invoke(app, ["onnx", str(loaded.path), "--imgsz", "500", "-o", str(out)])
    assert result.exit_code == 1 and out.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def test_window_error_is_raised_before_export_from_the_library(loaded, tmp_path):
    with pytest.raises(CloExportError, match="window_size 4"):
        export_onnx(loaded, tmp_path / "m.onnx", ExportOptions(imgsz=(256, 320)))
    assert not (tmp_path / "m.onnx").exists()


def test_simplifier_that_adds_shape_ops_is_rejected(loaded, tmp_path):
    """At 128 the attention has one key, and onnxsim folds its Softmax into ConstantOfShape(Shape(x))."""
    opts = ExportOptions(imgsz=(128, 128), dynamic_batch=True)
    result = export_onnx(loaded, tmp_path / "m.onnx", opts, parity_batches(opts.imgsz, (1, 3)))
    assert result.parity, result.parity.failures
    assert result.simplify.used == "none" and "shape arithmetic" in result.simplify.note
    assert lint(onnx.load(result.path)) == []
