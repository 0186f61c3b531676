"""The demo chain end to end on the bundled model, shortened (--quick), so it cannot rot."""

from __future__ import annotations

import json

import cv2
import pytest
from typer.testing import CliRunner

from clo_export.cli.main import app
from clo_export.demo.run import BUNDLED_MODEL, INT8_MAX_DROP, demo_targets


@pytest.mark.slow
@pytest.mark.skipif(
    not BUNDLED_MODEL.is_file(), reason="bundled demo model not built (python tools/make_demo_model.py)"
)
def test_quick_demo_runs_the_whole_chain(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())
    missed = [t for t in summary["targets"] if not t["met"]]  # 24 calibration images: INT8 may miss its target
    assert len(summary["targets"]) == 4 and result.exit_code == (1 if missed else 0), result.output
    assert (f"missed {len(missed)} of its 4 targets" in " ".join(result.output.split())) == bool(missed)
    assert all(t["met"] for t in summary["targets"][:2]), summary["targets"]  # FP32 parity and F1 always hold
    rows = {r["name"]: r for r in summary["rows"]}
    assert set(rows) >= {"pytorch", "onnx-fp32", "onnx-int8"}
    assert rows["pytorch"]["map50"] > 0.8  # a trained model finds the shapes
    assert rows["onnx-fp32"]["agreement_f1"] >= 0.999
    assert abs(rows["onnx-fp32"]["map50"] - rows["pytorch"]["map50"]) < 0.005
    cap = cv2.VideoCapture(str(tmp_path / "onnx-int8.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames"]
    cap.release()
    assert len((tmp_path / "onnx-fp32.jsonl").read_text().splitlines()) == summary["frames"]


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled demo model not built (tools/make_demo_model.py)")
def test_a_missed_target_fails_the_demo(tmp_path):
    """All INT8 (no float fallback) loses more than the demo's INT8 target on the quick video: printed, then exit 1."""
    result = CliRunner().invoke(app, ["demo", "--quick", "--all-int8", "--out", str(tmp_path)])
    summary = json.loads((tmp_path / "summary.json").read_text())  # written all the same
    rows = {r["name"]: r for r in summary["rows"]}
    drop = 100 * (rows["onnx-fp32"]["map50_95"] - rows["onnx-int8"]["map50_95"])
    assert drop > INT8_MAX_DROP, f"all INT8 lost only {drop:.2f} points on the quick demo: plant another miss"
    missed = [t["target"] for t in summary["targets"] if not t["met"]]
    assert any(t.startswith("INT8 mAP@.5:.95") for t in missed)
    assert result.exit_code == 1, result.output
    assert f"missed {len(missed)} of its {len(summary['targets'])} targets" in " ".join(result.output.split())


def test_a_failed_parity_is_a_missed_target_never_met():
    from clo_export.report import TOLERANCES, Report, TensorStats

    limit = TOLERANCES["fp32"].limit_for("output0.boxes")
    stats = TensorStats("output0.boxes", max_abs=10 * limit, mean_abs=0.0, cosine=1.0, shape=(1, 3, 6))
    failed = Report("fp32", TOLERANCES["fp32"], tensors={"output0.boxes": stats})
    (target,) = demo_targets([], failed)
    assert not target.met and "parity" in target.text and "output0.boxes" in target.text
    (target,) = demo_targets(
        [],
        Report(
            "fp32",
            TOLERANCES["fp32"],
            tensors={"output0.boxes": stats.__class__("output0.boxes", 0.0, 0.0, 1.0, (1, 3, 6))},
        ),
    )
    assert target.met


@pytest.mark.parametrize("int8_map50_95, met", [(0.8290, True), (0.8272, True), (0.8268, False), (float("nan"), False)])
def test_the_int8_target_is_the_quantizers_and_nan_misses_it(tmp_path, int8_map50_95, met):
    from clo_export.demo.run import ArtifactRow

    def row(name: str, map50_95: float) -> ArtifactRow:
        return ArtifactRow(name, "onnxruntime", "fp32", 0.95, map50_95, 0.95, map50_95, 1.0, 60.0, tmp_path, tmp_path)

    targets = demo_targets([row("onnx-fp32", 0.8300), row("onnx-int8", int8_map50_95)])
    by = {t.text.split(" (")[0]: t.met for t in targets}
    assert by["INT8 mAP@.5:.95"] is met and by["INT8 mAP@.5"]
    assert by["FP32 ONNX detection F1 vs PyTorch 1.0000 >= 0.999"]
    assert INT8_MAX_DROP == 0.3  # QuantizeOptions' default target_drop: one number for the quantizer and the demo


def test_decoded_frames_went_through_the_demo_codec_and_nothing_else(tmp_path):
    """Calibration frames from the deployment codec: as many PNGs as frames given, each the decoded H.264 frame
    (changed by a few grey levels, never by a second lossy codec), and the video itself not left behind."""
    import numpy as np

    from clo_export.demo.run import VIDEO_SIZE, read_video, write_decoded_frames, write_video
    from clo_export.demo.shapes import make_video_frames

    rendered = [f.image for f in make_video_frames(7, 12, VIDEO_SIZE)]
    paths = write_decoded_frames(tmp_path / "calib", rendered)
    assert [p.name for p in paths] == [f"calib_{i:04d}.png" for i in range(12)]
    assert sorted(tmp_path.rglob("*")) == [tmp_path / "calib", *paths]
    write_video(tmp_path / "again.mp4", rendered)
    decoded = read_video(tmp_path / "again.mp4")  # the same encoder and decoder give the same frames: PNG kept them
    for path, img, frame in zip(paths, rendered, decoded):
        saved = cv2.imread(str(path))
        assert saved.shape == img.shape and np.array_equal(saved, frame)
        assert 1.0 < np.abs(saved.astype(np.int16) - img).mean() < 10.0  # a codec was applied, a mild one
