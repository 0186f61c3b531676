"""clo-export check: table, JSON report, HTML page with side-by-side frames; non-zero exit on disagreement."""

from __future__ import annotations

import json

import typer
from typer.testing import CliRunner

from clo_export.cli.check import check

app = typer.Typer()
app.command()(check)  # main.py registers it as `clo-export check`
cli = CliRunner()


def test_check_passes_and_writes_json_and_html(art, tmp_path):
    res = cli.invoke(
        app,
        [
            str(art.onnx),
            "--weights",
            str(art.pt),
            "--source",
            str(art.video),
            "--limit",
            "6",
            "--json",
            str(tmp_path / "r.json"),
            "--report",
            str(tmp_path / "r.html"),
            "--frames",
            "2",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "output0.boxes" in res.output and "detections (F1)" in res.output and "within tolerance" in res.output
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["report"]["passed"] and data["frames"] == 6 and len(data["frame_f1"]) == 6
    assert data["report"]["detections"]["n_ref"] > 0
    page = (tmp_path / "r.html").read_text()
    assert "PASS" in page and page.count("data:image/jpeg;base64,") == 4  # 2 frames, PyTorch | model


def test_check_fails_against_the_wrong_checkpoint_and_shows_the_worst_frames(art, tmp_path):
    res = cli.invoke(
        app, [str(art.nms_onnx), "-w", str(art.other_pt), "-s", str(art.images), "--report", str(tmp_path / "r.html")]
    )
    assert res.exit_code == 1 and "check failed: " in res.output and "detections: F1" in res.output
    assert (art.nms_onnx.parent / (art.nms_onnx.name + ".check.json")).exists()
    page = (tmp_path / "r.html").read_text()
    assert "FAIL" in page and page.count("<img") == 6  # 3 images, all below tolerance


def test_check_refuses_a_checkpoint_with_other_classes(art, tmp_path):
    import copy

    from clo_export.models.checkpoint import load, save_yolov5
    from clo_export.models.yolo import DetectionModel

    model = DetectionModel(copy.deepcopy(load(art.pt).model.yaml), nc=2, names=["a", "b"])
    save_yolov5(model, tmp_path / "two.pt")
    res = cli.invoke(app, [str(art.onnx), "-w", str(tmp_path / "two.pt"), "-s", str(art.images)])
    assert res.exit_code == 1
    assert "number of classes differs: m.onnx has 3, two.pt has 2" in " ".join(res.output.split())
