"""The model decides the size (onnx, info, check, clo-infer, the API), and check compares the contract first."""

from __future__ import annotations

import logging

import onnx
import pytest
from typer.testing import CliRunner

from clo_export.artifacts import ModelInfo, check_contract
from clo_export.cli.main import app
from clo_export.demo.run import BUNDLED_MODEL
from clo_export.errors import CloExportError
from clo_export.imgsz import resolve_imgsz
from tests.helpers import IMGSZ, make_images

cli = CliRunner()
needs_demo = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled demo model not built")


def input_dims(path) -> list[int]:
    return [d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim]


def renamed(src, out, names, imgsz):
    """The checkpoint ``src`` with other class names (same weights), trained-at ``imgsz``."""
    from clo_export.models.checkpoint import load, save_yolov5

    model = load(src).model
    model.names = dict(enumerate(names))
    return save_yolov5(model, out, opt={"imgsz": imgsz} if imgsz else None)


@pytest.fixture(scope="module")
def demo_onnx(tmp_path_factory):
    """`clo-export onnx demo-shapes.pt` with no --imgsz: the export, and what the command printed."""
    import shutil

    d = tmp_path_factory.mktemp("demo")
    pt = shutil.copy(BUNDLED_MODEL, d / "demo-shapes.pt")
    res = cli.invoke(app, ["onnx", str(pt), "--no-check"])
    assert res.exit_code == 0, res.output
    return d / "demo-shapes.onnx", res.output


def test_resolve_imgsz_says_which_size_and_why(caplog):
    with caplog.at_level(logging.INFO, logger="clo_export"):
        assert resolve_imgsz("best.pt", (256, 256), None) == (256, 256)
        assert resolve_imgsz("best.pt", None, None) == (640, 640)
        assert resolve_imgsz("best.pt", (256, 256), (256, 256)) == (256, 256)
        assert resolve_imgsz("best.pt", None, (320, 320)) == (320, 320)
    assert [r.getMessage() for r in caplog.records] == [
        "imgsz 256x256: the checkpoint's training size",
        "imgsz 640x640: best.pt records no training size; YOLOv5's default (pass --imgsz H,W with the size it was "
        "trained at)",
        "imgsz 256x256: the checkpoint's training size",
        "imgsz 320x320: as requested (best.pt records no training size)",
    ]
    assert {r.levelno for r in caplog.records} == {logging.INFO}
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="clo_export"):
        assert resolve_imgsz("best.pt", (256, 256), (640, 480)) == (640, 480)
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (
            logging.WARNING,
            "imgsz 640x480 as requested, but best.pt was trained at 256x256: its detections differ at another size",
        )
    ]


@needs_demo
def test_onnx_exports_the_bundled_model_at_its_training_size(demo_onnx):
    path, output = demo_onnx
    assert input_dims(path) == [1, 3, 256, 256]
    assert "1x3x256x256" in output


@needs_demo
def test_the_api_and_the_options_default_to_the_training_size(tmp_path):
    import clo_export
    from clo_export.export.exporter import ExportOptions
    from clo_export.models.checkpoint import load

    assert ExportOptions().imgsz is None
    loaded = load(BUNDLED_MODEL)
    assert ExportOptions().for_model(loaded).imgsz == (256, 256)
    assert ExportOptions(imgsz=(320, 320)).for_model(loaded).imgsz == (320, 320)
    result = clo_export.export_onnx(loaded, tmp_path / "m.onnx", check=False)
    assert result.meta.imgsz == (256, 256) and input_dims(result.path) == [1, 3, 256, 256]


def test_a_checkpoint_without_a_size_keeps_640_and_says_so(small_model, tmp_path):
    from clo_export.export.exporter import ExportOptions
    from clo_export.models.checkpoint import load, save_yolov5

    loaded = load(save_yolov5(small_model, tmp_path / "nosize.pt"))
    assert loaded.imgsz_hint is None and ExportOptions().for_model(loaded).imgsz == (640, 640)
    res = cli.invoke(app, ["info", str(tmp_path / "nosize.pt"), "--no-layers"])
    assert res.exit_code == 0, res.output
    assert "nosize.pt records no training size" in res.output and "GFLOPs at 640x640" in res.output


def test_info_summarises_at_the_training_size(small_ckpt):
    res = cli.invoke(app, ["info", str(small_ckpt), "--no-layers"])
    assert res.exit_code == 0, res.output
    assert "imgsz 256x256: the checkpoint's training size" in res.output and "GFLOPs at 256x256" in res.output


def test_an_explicit_other_size_is_exported_with_one_warning(small_ckpt, tmp_path):
    out = tmp_path / "m.onnx"
    res = cli.invoke(
        app, ["onnx", str(small_ckpt), "--imgsz", "128", "-o", str(out), "--no-check", "--simplifier", "none"]
    )
    assert res.exit_code == 0, res.output
    assert input_dims(out) == [1, 3, 128, 128]
    assert res.output.count("WARNING") == 1
    assert "imgsz 128x128 as requested, but small.pt was trained at 256x256" in " ".join(res.output.split())


# ------------------------------------------------------------------------------------------- contract


def info(path="m.onnx", names=("circle", "square", "star"), stride=32, imgsz=(128, 128)) -> ModelInfo:
    return ModelInfo(path, "onnxruntime", dict(enumerate(names)), imgsz, stride)


@pytest.mark.parametrize(
    "artifact,message",
    [
        (info(names=("circle", "square")), "number of classes differs: m.onnx has 2, best.pt has 3"),
        (
            info(names=("circle", "star", "square")),
            "class names differ: class 1 is 'star' in m.onnx but 'square' in best.pt (2 of 3 names differ)",
        ),
        (info(stride=64), "stride differs: m.onnx has 64, best.pt has 32"),
        (info(imgsz=(256, 256)), "input size differs: m.onnx takes 256x256, best.pt runs at 128x128"),
    ],
)
def test_check_contract_names_the_field_and_both_values(artifact, message):
    checkpoint = info("best.pt")
    check_contract(info(), checkpoint)  # the same contract passes
    with pytest.raises(CloExportError, match="^" + message.replace("(", r"\(").replace(")", r"\)")):
        check_contract(artifact, checkpoint)


@needs_demo
def test_check_refuses_the_checkpoint_with_other_class_names(demo_onnx, tmp_path):
    images = make_images(tmp_path / "images")[0].parent
    other = renamed(BUNDLED_MODEL, tmp_path / "a-e.pt", "abcde", 256)
    res = cli.invoke(app, ["check", str(demo_onnx[0]), "-w", str(other), "-s", str(images)])
    assert res.exit_code == 1
    assert (
        "class names differ: class 0 is 'circle' in demo-shapes.onnx but 'a' in a-e.pt (5 of 5 names differ)"
        in " ".join(res.output.split())
    )
    assert not (demo_onnx[0].parent / "demo-shapes.onnx.check.json").exists()  # refused before any frame ran


def test_check_refuses_another_size_unless_asked_for(art, tmp_path):
    big = renamed(art.pt, tmp_path / "big.pt", ["circle", "square", "star"], 256)
    args = ["check", str(art.onnx), "-w", str(big), "-s", str(art.images), "--json", str(tmp_path / "r.json")]
    res = cli.invoke(app, args)
    assert res.exit_code == 1 and "input size differs: m.onnx takes 128x128, big.pt runs at 256x256" in " ".join(
        res.output.split()
    )
    res = cli.invoke(app, [*args, "--imgsz", str(IMGSZ)])
    assert res.exit_code == 0, res.output
    assert "imgsz 128x128 as requested, but big.pt was trained at 256x256" in " ".join(res.output.split())


def test_clo_infer_check_refuses_other_class_names(art, tmp_path):
    from clo_export.cli.infer import app as infer_app

    other = renamed(art.pt, tmp_path / "names.pt", ["a", "b", "c"], IMGSZ)
    res = cli.invoke(infer_app, [str(art.video), "-m", str(art.onnx), "--check", str(other), "-q"])
    assert res.exit_code == 1 and "class names differ: class 0 is 'circle' in m.onnx but 'a' in names.pt" in " ".join(
        res.output.split()
    )


@needs_demo
def test_check_runs_a_yolov5_dynamic_onnx_at_the_training_size(tmp_path):
    from tests import yolov5_standin

    dynamic = yolov5_standin.export_onnx(BUNDLED_MODEL, tmp_path / "dynamic.onnx", (256, 256), dynamic=True)
    images = make_images(tmp_path / "images")[0].parent
    res = cli.invoke(
        app, ["check", str(dynamic), "-w", str(BUNDLED_MODEL), "-s", str(images), "--json", str(tmp_path / "r.json")]
    )
    assert "imgsz 256x256: the checkpoint's training size" in res.output
    assert res.exit_code == 0, res.output
