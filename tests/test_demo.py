"""The demo chain end to end on the bundled model, shortened (--quick), so it cannot rot."""

from __future__ import annotations

import json

import cv2
import pytest
from typer.testing import CliRunner

from clo_export.cli.main import app
from clo_export.demo.run import BUNDLED_MODEL


@pytest.mark.slow
@pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled demo model not built (python tools/make_demo_model.py)")
def test_quick_demo_runs_the_whole_chain(tmp_path):
    result = CliRunner().invoke(app, ["demo", "--quick", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "summary.json").read_text())
    rows = {r["name"]: r for r in summary["rows"]}
    assert set(rows) >= {"pytorch", "onnx-fp32", "onnx-int8"}
    assert rows["pytorch"]["map50"] > 0.8  # a trained model finds the shapes
    assert rows["onnx-fp32"]["agreement_f1"] >= 0.999
    assert abs(rows["onnx-fp32"]["map50"] - rows["pytorch"]["map50"]) < 0.005
    cap = cv2.VideoCapture(str(tmp_path / "onnx-int8.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == summary["frames"]
    cap.release()
    assert len((tmp_path / "onnx-fp32.jsonl").read_text().splitlines()) == summary["frames"]


def test_a_failed_parity_is_a_missed_target_never_met():
    from clo_export.cli.demo import target_lines
    from clo_export.compare import TOLERANCES, Report, TensorStats

    limit = TOLERANCES["fp32"].limit_for("output0.boxes")
    stats = TensorStats("output0.boxes", max_abs=10 * limit, mean_abs=0.0, cosine=1.0, shape=(1, 3, 6))
    failed = Report("fp32", TOLERANCES["fp32"], tensors={"output0.boxes": stats})
    (text, ok), = target_lines([], failed)
    assert not ok and "parity" in text and "output0.boxes" in text
    (text, ok), = target_lines([], Report("fp32", TOLERANCES["fp32"], tensors={"output0.boxes": stats.__class__(
        "output0.boxes", 0.0, 0.0, 1.0, (1, 3, 6))}))
    assert ok
