"""Metadata: YOLOv5's stride/names strings, our clo_export.* keys, plain YOLOv5 files; the ONNX sidecar."""

from __future__ import annotations

import json
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

from clo_export import __version__
from clo_export.artifacts import ModelMeta, OnnxSidecar, read_metadata, write_metadata
from clo_export.errors import CloExportError
from clo_export.fileio import sidecar_path

NAMES = {0: "person", 1: "bicycle", 2: "traffic light"}


def _model(batch: int | str = 1, h: int = 480, w: int = 640) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("images", TensorProto.FLOAT, [batch, 3, h, w])
    y = helper.make_tensor_value_info("output0", TensorProto.FLOAT, [batch, 3, h, w])
    graph = helper.make_graph([helper.make_node("Identity", ["images"], ["output0"])], "g", [x], [y])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_round_trip(tmp_path: Path):
    meta = ModelMeta(
        stride=32,
        names=NAMES,
        imgsz=(480, 640),
        anchors=[[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119]],
        source_sha256="ab" * 32,
        precision="fp16",
        nms=True,
        nms_conf=0.25,
        nms_iou=0.45,
        nms_max_det=300,
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


def test_onnx_sidecar_round_trip(tmp_path: Path):
    meta = ModelMeta(stride=32, names=NAMES, imgsz=(480, 640), nc=3, opset=17, precision="fp32", version=__version__)
    side = OnnxSidecar(meta, "best.onnx", "best.pt", export_seconds=1.5, parity={"passed": True, "failures": []})
    path = side.write(tmp_path / "best.onnx")
    assert path == tmp_path / "best.onnx.json"
    data = json.loads(path.read_text())
    assert data["clo_export_version"] == __version__  # the marker key: a later write may replace this file
    assert data["stride"] == 32 and data["names"] == {"0": "person", "1": "bicycle", "2": "traffic light"}
    assert data["imgsz"] == [480, 640] and data["onnx"] == "best.onnx" and data["parity"]["passed"] is True
    assert "calibration" not in data and "accuracy" not in data  # a field that is None is not written
    assert OnnxSidecar.read(tmp_path / "best.onnx") == side


# What clo-export 0.1.0 wrote before the sidecars were typed (exporter with --no-check, then quantize), and
# an older export without the NMS and dynamic-batch keys, with a key this version does not know.
OLD_SIDECARS = {
    "export": {
        "clo_export_version": "0.1.0",
        "stride": 32,
        "names": {"0": "circle", "1": "square", "2": "star"},
        "imgsz": [256, 256],
        "nc": 3,
        "anchors": [[10.0, 13.0, 16.0, 30.0, 33.0, 23.0]],
        "source_sha256": "ab",
        "opset": 17,
        "precision": "fp32",
        "version": "0.1.0",
        "nms": False,
        "nms_conf": None,
        "nms_iou": None,
        "nms_max_det": None,
        "dynamic_batch": False,
        "onnx": "m.onnx",
        "source": "m.pt",
        "export_seconds": 3.1,
        "parity": None,
    },
    "quantize": {
        "clo_export_version": "0.1.0",
        "stride": 32,
        "names": {"0": "circle", "1": "square", "2": "star"},
        "imgsz": [256, 256],
        "nc": 3,
        "anchors": None,
        "source_sha256": "ab",
        "opset": 17,
        "precision": "int8",
        "version": "0.1.0",
        "nms": False,
        "nms_conf": None,
        "nms_iou": None,
        "nms_max_det": None,
        "dynamic_batch": False,
        "onnx": "m.int8.onnx",
        "source": "m.onnx",
        "calibration": {"method": "minmax", "images": 16},
        "float_nodes": ["/attn/Softmax"],
        "qdq": {"activation_tensors": 60, "weights": 57, "float_attention_nodes": []},
        "accuracy": {
            "file": "m.int8.accuracy.json",
            "agreement_map50_95": 0.9,
            "drop_map50_95_points": 1.2,
            "drop_map50_points": 0.4,
        },
    },
    "older": {
        "clo_export_version": "0.0.9",
        "stride": 32,
        "names": {"0": "person"},
        "imgsz": [640, 640],
        "precision": "fp16",
        "onnx": "best.onnx",
        "source": "best.pt",
        "simplifier": "onnxsim",
    },
}


@pytest.mark.parametrize("kind", sorted(OLD_SIDECARS))
def test_sidecars_written_before_the_typed_format_still_load(tmp_path: Path, kind: str):
    (tmp_path / "m.onnx.json").write_text(json.dumps(OLD_SIDECARS[kind], indent=2) + "\n")
    side = OnnxSidecar.read(tmp_path / "m.onnx")
    assert side.meta.stride == 32 and side.meta.names[0] in ("circle", "person") and side.meta.imgsz[0] in (256, 640)
    if kind == "export":
        assert side.export_seconds == 3.1 and side.parity is None and side.calibration is None and not side.meta.nms
    if kind == "quantize":
        assert (
            side.meta.precision == "int8" and side.calibration["images"] == 16 and side.float_nodes == ["/attn/Softmax"]
        )
        assert side.accuracy["drop_map50_95_points"] == 1.2 and side.source == "m.onnx"
    if kind == "older":
        assert side.meta.precision == "fp16" and side.meta.nc is None and side.meta.dynamic_batch is False
    side.write(tmp_path / "m.onnx")  # carries the marker key, so clo-export may replace it
    again = json.loads((tmp_path / "m.onnx.json").read_text())
    assert {k: v for k, v in again.items() if v is not None and k != "clo_export_version"}.items() >= {
        k: v for k, v in OLD_SIDECARS[kind].items() if v is not None and k not in ("clo_export_version", "simplifier")
    }.items()  # every fact it had is kept; a key this version does not know ("simplifier") is dropped


def test_onnx_sidecar_never_replaces_a_foreign_file_and_says_what_is_wrong(tmp_path: Path):
    model = tmp_path / "best.onnx"
    with pytest.raises(CloExportError, match=r"best.onnx.json is missing, .*re-export it with clo-export onnx"):
        OnnxSidecar.read(model)
    sidecar_path(model).write_text("{not json")
    with pytest.raises(CloExportError, match="cannot read .*best.onnx.json"):
        OnnxSidecar.read(model)
    sidecar_path(model).write_text('{"history": "mine"}\n')
    with pytest.raises(CloExportError, match="no stride and names"):
        OnnxSidecar.read(model)
    side = OnnxSidecar(ModelMeta(stride=32, names=NAMES), "best.onnx", "best.pt")
    with pytest.raises(CloExportError, match="was not written by clo-export"):
        side.write(model)
    assert sidecar_path(model).read_text() == '{"history": "mine"}\n'
