"""clo-infer end to end on real files: video, images, NMS models, .pt, live check, errors, Ctrl-C."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from clo_export.cli.infer import app
from tests.helpers import NAMES, InterruptingSource, read_video

cli = CliRunner()


def invoke(*args):
    return cli.invoke(app, [str(a) for a in args])


def records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_video_to_annotated_mp4_and_jsonl_keeps_frames_and_fps(art, tmp_path):
    res = invoke(
        art.video,
        "-m",
        art.onnx,
        "--save",
        tmp_path / "out.mp4",
        "--json",
        tmp_path / "d.jsonl",
        "-q",
        "--workers",
        "2",
    )
    assert res.exit_code == 0, res.output
    assert "FPS end-to-end" in res.output and "inference" in res.output and "p95" in res.output
    assert "2 streams" in res.output
    assert read_video(tmp_path / "out.mp4") == (24, pytest.approx(12.0), (320, 240))
    recs = records(tmp_path / "d.jsonl")
    assert [r["frame"] for r in recs] == list(range(24))
    assert [r["timestamp"] for r in recs] == pytest.approx([i / 12 for i in range(24)], abs=1e-6)
    det = next(d for r in recs for d in r["detections"])
    assert set(det) == {"class_id", "class_name", "score", "xyxy"} and det["class_name"] == NAMES[det["class_id"]]
    boxes = [d["xyxy"] for r in recs for d in r["detections"]]
    assert all(0 <= x1 <= x2 <= 320 and 0 <= y1 <= y2 <= 240 for x1, y1, x2, y2 in boxes)  # original-frame pixels


def test_high_threshold_gives_empty_frames_and_still_a_full_video(art, tmp_path):
    res = invoke(
        art.video,
        "-m",
        art.nms_onnx,
        "--conf",
        "0.99",
        "--save-dir",
        tmp_path,
        "--json",
        tmp_path / "d.jsonl",
        "--limit",
        "5",
        "-q",
    )
    assert res.exit_code == 0, res.output
    assert read_video(tmp_path / "v.mp4")[0] == 5
    assert [r["detections"] for r in records(tmp_path / "d.jsonl")] == [[]] * 5


def test_image_folder_with_an_unreadable_file(art, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for p in art.images.iterdir():
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8 garbage")
    res = invoke(
        folder,
        "-m",
        art.nms_onnx,
        "--save-dir",
        tmp_path / "out",
        "--json",
        tmp_path / "d.jsonl",
        "--classes",
        "circle,2",
        "-q",
    )
    assert res.exit_code == 0, res.output
    assert "1 unreadable" in res.output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in art.images.iterdir())
    recs = records(tmp_path / "d.jsonl")
    assert len(recs) == 3 and all(r["timestamp"] is None for r in recs)
    assert {d["class_id"] for r in recs for d in r["detections"]} <= {0, 2}


def test_pytorch_checkpoint_runs_too(art, tmp_path):
    res = invoke(art.video, "-m", art.pt, "--device", "cpu", "--json", tmp_path / "d.jsonl", "--limit", "3", "-q")
    assert res.exit_code == 0, res.output
    assert "pytorch" in res.output and len(records(tmp_path / "d.jsonl")) == 3


def test_live_check_against_pytorch_passes_and_a_wrong_reference_fails(art):
    res = invoke(art.video, "-m", art.onnx, "--check", art.pt, "--check-every", "6", "-q")
    assert res.exit_code == 0, res.output
    assert "4 frames" in res.output and "within tolerance" in res.output
    res = invoke(art.video, "-m", art.nms_onnx, "--check", art.other_pt, "--check-every", "12", "-q")
    assert res.exit_code == 1 and "live check on 2 frame(s) failed: " in res.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--save", "x.mp4", "--save-dir", "d"], "not both"),
        (["--infer-batch", "2"], "fixed batch of 1"),
        (["--classes", "dog"], "neither a class id"),
        (["--conf", "1.5"], "must lie in [0, 1]"),
        (["--imgsz", "256"], "takes 128x128 inputs only"),
        (["--workers", "0"], "must be at least 1"),
        (["--sequential", "--workers", "2"], "drop --workers 2 or --sequential"),
    ],
)
def test_bad_options_are_one_line_errors(art, tmp_path, args, message):
    res = invoke(art.video, "-m", art.onnx, *args)
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert lines[-1].startswith("error:") and message in res.output


def test_unreadable_video_and_save_for_images_are_clear_errors(art, tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00" * 5000)
    res = invoke(bad, "-m", art.onnx, "--save", tmp_path / "o.mp4")
    assert res.exit_code == 1 and "cannot read video" in res.output and not (tmp_path / "o.mp4").exists()
    res = invoke(art.images, "-m", art.onnx, "--save", tmp_path / "o.mp4")
    assert res.exit_code == 1 and "use --save-dir" in res.output


def test_ctrl_c_exits_130_with_complete_outputs(art, tmp_path, monkeypatch):
    import clo_export.data.readers as sources

    real = sources.open_source
    monkeypatch.setattr(sources, "open_source", lambda spec, *args, **kw: _interrupting(real(spec, *args, **kw)))
    res = invoke(art.video, "-m", art.onnx, "--save", tmp_path / "o.mp4", "--json", tmp_path / "d.jsonl", "-q")
    assert res.exit_code == 130 and "interrupted after 5 frames" in res.output
    assert read_video(tmp_path / "o.mp4")[0] == 5 and len(records(tmp_path / "d.jsonl")) == 5


def _interrupting(src):
    wrapped = InterruptingSource(src, 5)
    wrapped.fps, wrapped.size, wrapped.spec = src.fps, src.size, src.spec
    wrapped.expected = src.expected
    return wrapped


def test_help_imports_neither_torch_nor_onnxruntime():
    code = textwrap.dedent("""
        import sys
        sys.argv = ["clo-infer", "--help"]
        from clo_export.cli.infer import app
        try:
            app()
        except SystemExit:
            pass
        print("HEAVY", [m for m in ("torch", "onnxruntime", "tensorrt", "onnx", "cv2") if m in sys.modules])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout and "--model" in out.stdout and "--check" in out.stdout
