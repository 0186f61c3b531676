"""Annotated video is H.264 in MP4 (PyAV/libx264), checked with ffprobe; without PyAV it is mp4v, said once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clo_export.data.readers import Frame
from clo_export.data.sinks import VideoSink
from tests.helpers import make_video, scene

pytest.importorskip("av", reason="PyAV (the export extra) writes H.264")
FFPROBE = shutil.which("ffprobe")
pytestmark = pytest.mark.skipif(FFPROBE is None, reason="ffprobe (Debian: ffmpeg) checks the written videos")
ROOT = Path(__file__).resolve().parents[1]
NO_AV = "import sys; sys.modules['av'] = None; from clo_export.cli.infer import main; main()"  # import av fails


def probe(path: Path) -> dict:
    """ffprobe's view of the first video stream: codec, decoded frame count, frame rate, size, pixel format."""
    out = subprocess.run(
        [FFPROBE, "-v", "error", "-select_streams", "v:0", "-count_frames", "-show_entries",
         "stream=codec_name,nb_read_frames,r_frame_rate,avg_frame_rate,width,height,pix_fmt", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    s = json.loads(out)["streams"][0]
    return {
        "codec": s["codec_name"],
        "frames": int(s["nb_read_frames"]),
        "fps": s["r_frame_rate"],
        "avg_fps": s["avg_frame_rate"],
        "size": (s["width"], s["height"]),
        "pix_fmt": s["pix_fmt"],
    }


@pytest.mark.parametrize("suffix", [".mp4", ".mov", ".mkv"])
def test_the_video_sink_writes_h264_with_every_frame_at_the_source_fps_and_size(tmp_path, suffix):
    rng = np.random.default_rng(0)
    out = tmp_path / f"out{suffix}"
    sink = VideoSink(out, 30000 / 1001, (320, 240))  # NTSC's 29.97: kept exactly, not rounded to 30
    for i in range(37):
        sink.write(Frame(i, i / 29.97, scene(rng), "x"), np.zeros((0, 6)), None)
    sink.write(Frame(37, None, scene(rng, (200, 100)), "x"), np.zeros((0, 6)), None)  # another size is resized
    assert not out.exists() and [p.name.startswith(".out.part") for p in tmp_path.iterdir()] == [True]
    sink.close()
    assert sink.codec == "h264" and [p.name for p in tmp_path.iterdir()] == [out.name]
    assert probe(out) == {
        "codec": "h264",
        "frames": 38,
        "fps": "30000/1001",
        "avg_fps": "30000/1001",
        "size": (320, 240),
        "pix_fmt": "yuv420p",
    }


def test_an_aborted_h264_video_leaves_nothing(tmp_path):
    sink = VideoSink(tmp_path / "new" / "out.mp4", 10, (64, 48))
    for i in range(5):
        sink.write(Frame(i, None, np.full((48, 64, 3), 40 * i, np.uint8), "x"), np.zeros((0, 6)), None)
    sink.abort()
    assert list(tmp_path.iterdir()) == [] and sink.outputs == []


def test_an_odd_frame_size_loses_its_last_column_and_row_as_in_mp4v(tmp_path):
    """yuv420p needs even sizes: a 161x121 source is written 160x120 in H.264, as OpenCV's mp4v writes it."""
    sink = VideoSink(tmp_path / "odd.mp4", 12, (161, 121))
    for i in range(6):
        sink.write(Frame(i, None, np.full((121, 161, 3), 30 * i, np.uint8), "x"), np.zeros((0, 6)), None)
    sink.close()
    got = probe(tmp_path / "odd.mp4")
    assert (sink.codec, got["codec"], got["frames"], got["size"], got["fps"]) == ("h264", "h264", 6, (160, 120), "12/1")


def infer_cmd(code: str, *args: str) -> subprocess.CompletedProcess:
    """clo-infer in its own Python process (``code`` runs it), output collected."""
    env = {**os.environ, "COLUMNS": "400", "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300)


def test_clo_infer_saves_h264_that_keeps_every_frame_fps_and_size(ws):
    src = make_video(ws / "odd_rate.mp4", frames=31, fps=15.0, size=(320, 240), seed=3)
    r = infer_cmd("from clo_export.cli.infer import main; main()", str(src), "-m", "m.onnx", "-q", "--save", "o.mp4")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "mp4v" not in r.stdout + r.stderr
    assert probe(ws / "o.mp4") == {
        "codec": "h264",
        "frames": 31,
        "fps": "15/1",
        "avg_fps": "15/1",
        "size": (320, 240),
        "pix_fmt": "yuv420p",
    }


def test_without_pyav_clo_infer_writes_mp4v_and_says_so_once(ws):
    """Two streams saved with PyAV unimportable: two mp4v videos, one line naming the fix (pip install av)."""
    shutil.copy(ws / "v.mp4", ws / "w.mp4")
    r = infer_cmd(NO_AV, "v.mp4", "w.mp4", "-m", "m.onnx", "-q", "--save-dir", "out")
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    said = [line for line in out.splitlines() if "mp4v" in line]
    assert len(said) == 1 and "PyAV is not installed" in said[0] and "pip install av" in said[0], out
    for name in ("0_v.mp4", "1_w.mp4"):
        got = probe(ws / "out" / name)
        assert (got["codec"], got["frames"], got["size"], got["fps"]) == ("mpeg4", 24, (320, 240), "12/1")
