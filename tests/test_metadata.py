"""Metadata: YOLOv5's stride/names strings, our clo_export.* keys, plain YOLOv5 files, the sidecar path."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from clo_export import __version__
from clo_export.errors import CloExportError
from clo_export.export.metadata import ModelMeta, read_metadata, sidecar_path, write_metadata

NAMES = {0: "person", 1: "bicycle", 2: "traffic light"}


def _model(batch: int | str = 1, h: int = 480, w: int = 640) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 3, h, w])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output0"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_round_trip(tmp_path: Path):
    meta = ModelMeta(
        stride=32, names=NAMES, imgsz=(480, 640), anchors=[[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
        source_sha256="ab" * 32, precision="fp16", nms=True, nms_conf=0.25, nms_iou=0.45, nms_max_det=300,
        dynamic_batch=True,
    )
    model = _model("batch")
    model.metadata_props.add(key="author", value="someone")
    write_metadata(model, meta)
    props = {p.key: p.value for p in model.metadata_props}
    assert props["stride"] == "32"
    assert props["names"] == str(NAMES) == "{0: 'person', 1: 'bicycle', 2: 'traffic light'}"  # YOLOv5's str(dict)
    assert props["author"] == "someone"
    assert props["clo_export.nms"] == "true" and props["clo_export.opset"] == "17"

    path = tmp_path / "best.onnx"
    onnx.save(model, path)
    back = read_metadata(path)
    expected = ModelMeta(**{**meta.__dict__, "nc": 3, "opset": 17, "version": __version__})
    assert back == expected
    assert ModelMeta.from_dict(json.loads(json.dumps(back.to_dict()))) == back


def test_rewrite_drops_stale_keys():
    model = _model()
    write_metadata(model, ModelMeta(stride=32, names=NAMES, nms=True, nms_conf=0.25, nms_iou=0.45, nms_max_det=300))
    write_metadata(model, ModelMeta(stride=16, names={0: "a"}))
    back = read_metadata(model)
    assert (back.stride, back.names, back.nms, back.nms_conf) == (16, {0: "a"}, False, None)
    assert len([p for p in model.metadata_props if p.key == "stride"]) == 1


def test_plain_yolov5_export():
    """YOLOv5's export.py writes only stride and names; the rest comes from the graph."""
    model = _model(1, 640, 640)
    onnx.helper.set_model_props(model, {"stride": "32", "names": str(NAMES)})
    meta = read_metadata(model)
    assert (meta.stride, meta.names, meta.imgsz, meta.nc, meta.opset) == (32, NAMES, (640, 640), 3, 17)
    assert (meta.nms, meta.dynamic_batch, meta.precision, meta.version) == (False, False, None, None)
    assert read_metadata(_set(_model("batch"), names="['a', 'b']")).names == {0: "a", 1: "b"}  # old list form
    assert read_metadata(_set(_model("batch"), names="{0: 'a'}")).dynamic_batch is True


def _set(model: onnx.ModelProto, names: str) -> onnx.ModelProto:
    onnx.helper.set_model_props(model, {"stride": "32", "names": names})
    return model


@pytest.mark.parametrize("names", ["__import__('os').system('true')", "{0: 'a'", "42"])
def test_names_are_literals_only(names):
    with pytest.raises(CloExportError, match="names"):
        read_metadata(_set(_model(), names))


def test_missing_metadata():
    with pytest.raises(CloExportError, match="no YOLOv5 metadata"):
        read_metadata(_model())


def test_sidecar_path():
    assert sidecar_path("runs/best.onnx") == Path("runs/best.onnx.json")
    assert sidecar_path(Path("best.fp16.onnx")) == Path("best.fp16.onnx.json")
