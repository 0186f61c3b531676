"""GStreamer sources: the pipelines --decoder builds (exact text), pipeline strings as SOURCE, the one line without
GStreamer, and the Jetson recipe run for real: Debian's python3 + python3-opencv (built with GStreamer) in a
--system-site-packages venv with our core install, decoding a real H.264 file and a real RTSP camera with
``avdec_h264`` standing in for the Jetson's ``nvv4l2decoder`` (the two pipelines differ only in that step)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from clo_export.data.gstreamer import decode_pipeline, is_live_pipeline, is_pipeline, quote
from clo_export.errors import CloExportError
from tests.faults_harness import error_lines, infer

ROOT = Path(__file__).resolve().parents[1]
SYSTEM_PYTHON = "/usr/bin/python3"
ELEMENTS = ("filesrc", "qtdemux", "h264parse", "avdec_h264", "videoconvert", "appsink", "rtspsrc", "rtph264depay")
REQUIRED = os.environ.get("CLO_EXPORT_REQUIRE_RTSP") == "1"
CORE_DEPS = ("onnx", "polygraphy", "typer", "typing_extensions", "onnxruntime")  # Debian has numpy and pyyaml
NVV4L2_DECODE = "nvv4l2decoder ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! video/x-raw,format=BGR"
# measured on the 24-frame test video: avdec_h264 + videoconvert vs OpenCV's FFmpeg reader, mean |diff| 1.4-1.6
# grey levels per frame and at most 5 (the YUV->BGR conversions differ); a channel swap or wrong frame is ~50
MAX_MEAN_DIFF, MAX_DIFF = 3.0, 10


@pytest.mark.parametrize(
    "source, decoder, expected",
    [
        (
            "/data/cam 1/a.mp4",
            "nvv4l2",
            'filesrc location="/data/cam 1/a.mp4" ! qtdemux ! h264parse ! ' + NVV4L2_DECODE + " ! appsink sync=false",
        ),
        (
            "clip.MKV",
            "gst",
            'filesrc location="clip.MKV" ! matroskademux ! h264parse ! avdec_h264 ! videoconvert ! '
            "video/x-raw,format=BGR ! appsink sync=false",
        ),
        (
            "rtsp://user:pw@10.0.0.5:554/stream1?ch=1",
            "nvv4l2",
            'rtspsrc location="rtsp://user:pw@10.0.0.5:554/stream1?ch=1" latency=200 ! rtph264depay ! h264parse ! '
            + NVV4L2_DECODE
            + " ! appsink drop=true max-buffers=1 sync=false",
        ),
        (
            "rtsp://127.0.0.1:8554/cam",
            "gst",
            'rtspsrc location="rtsp://127.0.0.1:8554/cam" latency=200 ! rtph264depay ! h264parse ! avdec_h264 ! '
            "videoconvert ! video/x-raw,format=BGR ! appsink drop=true max-buffers=1 sync=false",
        ),
    ],
)
def test_the_decode_pipelines_are_exactly_these(source, decoder, expected):
    assert decode_pipeline(source, decoder) == expected
    assert is_pipeline(expected) and is_live_pipeline(expected) == source.startswith("rtsp://")


def test_paths_with_quotes_and_backslashes_are_quoted_for_gst_launch():
    assert quote('my "best" clip\\1.mp4') == '"my \\"best\\" clip\\\\1.mp4"'
    assert decode_pipeline('a "b".mov', "gst").startswith('filesrc location="a \\"b\\".mov" ! qtdemux ! ')


def test_what_is_a_pipeline_source():
    assert is_pipeline("nvarguscamerasrc ! nvvidconv ! video/x-raw,format=BGRx ! videoconvert ! appsink drop=1")
    assert is_live_pipeline("v4l2src device=/dev/video0 ! videoconvert ! appsink")
    assert not is_pipeline("my ! video.mp4") and not is_pipeline("videotestsrc ! fakesink")
    assert not is_pipeline("rtsp://cam/appsink")


def test_a_container_without_a_known_demuxer_is_one_line():
    with pytest.raises(CloExportError, match="--decoder gst builds H.264 pipelines for .avi, .m4v, .mkv, .mov, .mp4"):
        decode_pipeline("clip.webm", "gst")


@pytest.mark.parametrize("how", ["--decoder", "pipeline"])
def test_an_opencv_without_gstreamer_is_one_line_naming_the_fix(ws, how):
    import cv2

    if cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER):
        pytest.skip("this OpenCV has GStreamer (the refusal is for PyPI's wheels)")
    args = ["v.mp4", "--decoder", "gst"] if how == "--decoder" else [decode_pipeline(str(ws / "v.mp4"), "gst")]
    result = infer(*args, "-m", "m.onnx", "-q")
    assert result.exit_code == 1 and "Traceback" not in result.output
    (line,) = error_lines(result.output)
    assert "needs OpenCV with GStreamer" in line and "JetPack's OpenCV" in line and "python3-opencv" in line


def _system_problem() -> str | None:
    """What the Jetson stand-in lacks here: Debian's python3 with a GStreamer OpenCV, and the elements we use."""
    if not Path(SYSTEM_PYTHON).exists() or shutil.which("gst-inspect-1.0") is None:
        return f"{SYSTEM_PYTHON} or gst-inspect-1.0 not found"
    code = "import cv2; assert cv2.videoio_registry.hasBackend(cv2.CAP_GSTREAMER)"
    if subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True).returncode:
        return "Debian's python3-opencv (built with GStreamer) is not installed"
    missing = [e for e in ELEMENTS if subprocess.run(["gst-inspect-1.0", "--exists", e]).returncode]
    return f"GStreamer elements missing: {', '.join(missing)}" if missing else None


@pytest.fixture(scope="module")
def jetson_venv(tmp_path_factory) -> Path:
    """The JetPack recipe on Debian: a --system-site-packages venv of /usr/bin/python3 (its OpenCV and numpy), our
    core install without dependencies, then the core dependencies Debian lacks, pinned, never numpy or a PyPI OpenCV."""
    problem = _system_problem()
    if problem:
        reason = f"no Jetson stand-in ({problem}); install it with: make system-deps"
        if REQUIRED:
            pytest.fail(reason)
        pytest.skip(reason)
    root = tmp_path_factory.mktemp("jetson")
    venv = root / "venv"
    pins = root / "constraints.txt"
    lines = (ROOT / "constraints.txt").read_text().splitlines()
    pins.write_text("\n".join(ln for ln in lines if not ln.lower().startswith(("numpy", "opencv"))) + "\n")
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-compile",
    ]
    for cmd in (
        [SYSTEM_PYTHON, "-m", "venv", "--system-site-packages", str(venv)],
        [*pip, "--no-deps", "-e", str(ROOT)],
        [*pip, "-c", str(pins), *CORE_DEPS],
    ):
        step = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert step.returncode == 0, step.stdout[-2000:] + step.stderr[-2000:]
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import cv2, numpy; print(cv2.__file__); print(numpy.__file__)"],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert all(p.startswith("/usr/lib/python3/") for p in where), where  # Debian's OpenCV and numpy, as JetPack's
    return venv


def run_infer(venv: Path, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["COLUMNS"] = "400"
    return subprocess.run(
        [str(venv / "bin" / "clo-infer"), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env
    )


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def h264_file(art, tmp_path_factory) -> Path:
    """The test video re-encoded as H.264 (our PyAV writer) under a name with a space and double quotes."""
    from clo_export.data.readers import open_source
    from clo_export.data.sinks import VideoSink

    src = open_source(str(art.video))
    sink = VideoSink(tmp_path_factory.mktemp("h264") / 'cam "north" 1.mp4', src.fps, src.size)
    for frame in src:
        sink.write(frame, np.zeros((0, 6)), None)
    sink.close()
    assert sink.codec == "h264"
    return sink.path


PIXELS = """
import json, sys, numpy as np
from clo_export.data.readers import open_source
gst = [f.image.astype(np.int16) for f in open_source(sys.argv[1], decoder="gst")]
ref = [f.image.astype(np.int16) for f in open_source(sys.argv[1])]
d = [np.abs(a - b) for a, b in zip(gst, ref)]
print(json.dumps([len(gst), len(ref), max(float(x.mean()) for x in d), max(int(x.max()) for x in d)]))
"""


@pytest.mark.install
def test_jetson_recipe_decodes_an_h264_file_through_gstreamer(jetson_venv, h264_file, art, tmp_path):
    """--decoder gst and the same pipeline given as SOURCE: every frame, at the file's times and size, pixels as
    OpenCV's FFmpeg reader decodes them (within the conversions' difference); the nvv4l2 text differs only in the
    decode step (checked exactly above)."""
    shutil.copy(art.onnx, tmp_path / "m.onnx")
    ref = run_infer(jetson_venv, tmp_path, str(h264_file), "-m", "m.onnx", "-q", "--json", "ref.jsonl")
    assert ref.returncode == 0, ref.stdout + ref.stderr
    pipeline = decode_pipeline(str(h264_file), "gst")
    for name, source in (("dec", [str(h264_file), "--decoder", "gst"]), ("pipe", [pipeline])):
        r = run_infer(
            jetson_venv, tmp_path, *source, "-m", "m.onnx", "-q", "--json", f"{name}.jsonl", "--save-dir", name
        )
        out = r.stdout + r.stderr
        assert r.returncode == 0 and "Traceback" not in out and "cap_gstreamer" not in out, out  # OpenCV quiet
        got, want = records(tmp_path / f"{name}.jsonl"), records(tmp_path / "ref.jsonl")
        assert [(g["frame"], g["timestamp"], g["width"], g["height"]) for g in got] == [
            (w["frame"], w["timestamp"], w["width"], w["height"]) for w in want
        ]
        assert len(got) == 24 and sum(len(g["detections"]) for g in got) > 0
    assert [p.name for p in (tmp_path / "dec").iterdir()] == [h264_file.name]  # named after the file, as ever
    assert [p.name for p in (tmp_path / "pipe").iterdir()] == ["pipeline.mp4"]
    (tmp_path / "cams.streams").write_text(f"# the Jetson recipe's list\n{h264_file}\n{pipeline}\n")
    multi = run_infer(jetson_venv, tmp_path, "cams.streams", "--decoder", "gst", "-m", "m.onnx", "-q", "--json",
                      "multi.jsonl", "--save-dir", "multi")  # fmt: skip
    assert multi.returncode == 0, multi.stdout + multi.stderr
    per = [[r["timestamp"] for r in records(tmp_path / "multi.jsonl") if r["stream"] == i] for i in (0, 1)]
    assert per[0] == per[1] == [r["timestamp"] for r in records(tmp_path / "ref.jsonl")]  # every frame of each
    assert sorted(p.name for p in (tmp_path / "multi").iterdir()) == [f"0_{h264_file.name}", "1_pipeline.mp4"]
    no_hw = run_infer(jetson_venv, tmp_path, str(h264_file), "--decoder", "nvv4l2", "-m", "m.onnx", "-q")
    lines = [ln for ln in (no_hw.stdout + no_hw.stderr).splitlines() if ln.startswith("error:")]
    assert no_hw.returncode == 1 and "Traceback" not in no_hw.stderr and len(lines) == 1, no_hw.stderr
    assert "GStreamer cannot open" in lines[0] and "nvv4l2decoder ! nvvidconv" in lines[0]  # the Jetson pipeline
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    px = subprocess.run(
        [str(jetson_venv / "bin" / "python"), "-c", PIXELS, str(h264_file)],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert px.returncode == 0, px.stderr
    n_gst, n_ref, mean_diff, max_diff = json.loads(px.stdout)
    assert n_gst == n_ref == 24 and mean_diff <= MAX_MEAN_DIFF and max_diff <= MAX_DIFF, px.stdout


@pytest.mark.install
@pytest.mark.server
def test_jetson_recipe_reads_an_rtsp_camera_through_gstreamer_and_reconnects(jetson_venv, camera, art, tmp_path):
    """A real RTSP camera through rtspsrc ! … ! avdec_h264: frames at the camera's size; killed and restarted on its
    port, the stream resumes and is counted as one reconnect, as with OpenCV's own reader."""
    shutil.copy(art.onnx, tmp_path / "m.onnx")
    limit = 80  # ~5 s at the camera's 15 fps: the run goes on well past the outage
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    args = [camera.url, "--decoder", "gst", "-m", "m.onnx", "-q", "--json", "out.jsonl", "--reconnect", "20"]
    proc = subprocess.Popen(
        [str(jetson_venv / "bin" / "clo-infer"), *args, "--limit", str(limit)],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env={**env, "COLUMNS": "400"},
    )  # fmt: skip
    try:
        t0 = time.monotonic()
        while not any(".part" in p.name and p.stat().st_size > 4000 for p in tmp_path.iterdir() if p.is_file()):
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() - t0 < 60, "no frames from the camera"
            time.sleep(0.05)
        camera.kill()
        killed = time.monotonic()
        time.sleep(3)
        assert proc.poll() is None  # still waiting for the camera
        camera.start()
        away = time.monotonic() - killed
        out = proc.communicate(timeout=30)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out
    assert "1 reconnect(s) of the live source" in out and "error" not in out and "Traceback" not in out, out
    recs = records(tmp_path / "out.jsonl")
    assert len(recs) == limit and {(r["width"], r["height"]) for r in recs} == {(320, 240)}
    assert recs[0]["source"] == camera.url  # the URL, not the pipeline, names the stream
    gaps = [b["timestamp"] - a["timestamp"] for a, b in zip(recs, recs[1:])]
    assert 3 <= max(gaps) < away + 5 and sorted(gaps)[-2] < 1  # the outage shows, only there; resumed within 5 s
