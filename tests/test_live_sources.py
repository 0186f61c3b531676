"""Live sources against a real RTSP camera on 127.0.0.1 (tests/rtsp_camera.py, GStreamer's gst-rtsp-server run by
Debian's python3): a camera that goes away is reconnected or reported lost (exit 1, one line), never a finished video.

The camera needs python3-gi, gir1.2-gst-rtsp-server-1.0 and the GStreamer plugins (``make system-deps``); without
them these tests skip with the reason, and fail where ``CLO_EXPORT_REQUIRE_RTSP=1`` (CI).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clo_export.cli.infer import app
from tests.helpers import read_video


def infer(args: list, cwd: Path) -> tuple[subprocess.Popen, list[str]]:
    """clo-infer as its own process (signals, exit code), run as a foreground job would; output lines collected."""
    cmd = [sys.executable, "-c", "from clo_export.cli.infer import main; main()", *map(str, args)]
    proc = subprocess.Popen(
        cmd,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "400"},
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True).start()
    return proc, lines


def wait_for_frames(folder: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Until the JSON Lines being written hold some frames (its temporary file grows)."""
    t0 = time.monotonic()
    while not any(".part" in p.name and p.stat().st_size > 4000 for p in folder.iterdir() if p.is_file()):
        assert proc.poll() is None, "clo-infer ended before frames arrived"
        assert time.monotonic() - t0 < timeout, "no frames from the camera"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, lines: list[str], timeout: float) -> tuple[int, str, float]:
    """Exit code, output and seconds until clo-infer exited."""
    t0 = time.monotonic()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail(f"clo-infer still running {timeout} s later:\n" + "".join(lines))
    time.sleep(0.2)  # the reader thread takes the last lines
    return rc, "".join(lines), time.monotonic() - t0


def records(path: Path) -> list[dict]:
    """Every line parses as strict JSON; frames in order (a live source may drop some to keep up), stamped in
    increasing seconds."""
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    for key in ("frame", "timestamp"):
        values = [r[key] for r in recs]
        assert values == sorted(values) and len(set(values)) == len(values)
    return recs


def no_leftovers(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if ".part" in p.name]


@pytest.mark.parametrize(
    "how, reconnect",
    [("kill", 3.0), ("kill", 0.0), ("stall", 0.0)],
    ids=["killed-retried-then-given-up", "killed-reconnect-0", "stalled-reconnect-0"],
)
@pytest.mark.slow
@pytest.mark.server
def test_a_camera_that_never_returns_ends_the_run_with_exit_1_and_one_line(art, camera, tmp_path, how, reconnect):
    from clo_export.data.live import READ_TIMEOUT

    proc, lines = infer(
        [camera.url, "-m", art.onnx, "-q", "--json", "out.jsonl", "--save", "out.mp4", "--reconnect", reconnect],
        tmp_path,
    )
    wait_for_frames(tmp_path, proc)
    if how == "kill":
        camera.kill()  # the connection closes
        seen = 0.0
    else:
        camera.proc.send_signal(signal.SIGSTOP)  # the connection stays, nothing arrives: FFmpeg's read timeout
        seen = 2 * READ_TIMEOUT
    rc, out, took = finish(proc, lines, reconnect + seen + 15)
    assert rc == 1, out
    assert "Traceback" not in out and "wrote" in out  # the outputs so far are kept and named
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"stream '{camera.url}' lost after" in errors[0], out
    assert ("retried for 3 s" if reconnect else "not retried (--reconnect 0)") in errors[0]
    assert "until the live source was lost" in " ".join(out.split()) and "finished" not in out
    assert ("the stream ended" if how == "kill" else "no frame for") in errors[0]
    assert reconnect <= took < reconnect + seen + 6  # noticed, retried as long as asked, then no longer
    recs = records(tmp_path / "out.jsonl")
    assert len(recs) >= 5 and read_video(tmp_path / "out.mp4") == (len(recs), 15.0, (320, 240))  # closed, playable
    no_leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.server
def test_a_camera_that_returns_resumes_the_run_and_is_counted(art, camera, tmp_path):
    limit = 80  # ~5 s at the camera's 15 fps: the run goes on well past the outage
    proc, lines = infer(
        [camera.url, "-m", art.onnx, "-q", "--json", "out.jsonl", "--reconnect", 20, "--limit", limit], tmp_path
    )
    wait_for_frames(tmp_path, proc)
    camera.kill()
    killed = time.monotonic()
    time.sleep(3)
    assert proc.poll() is None  # still waiting for the camera
    camera.start()
    away = time.monotonic() - killed
    rc, out, _ = finish(proc, lines, 25)
    assert rc == 0, out
    assert "1 reconnect(s) of the live source" in out and "error" not in out
    recs = records(tmp_path / "out.jsonl")
    assert recs[-1]["frame"] == limit - 1  # --limit counts the frames received (live frames may be dropped to keep up)
    gaps = [b["timestamp"] - a["timestamp"] for a, b in zip(recs, recs[1:])]
    assert 3 <= max(gaps) < away + 5  # the outage shows in the timestamps; frames again within 5 s of the return
    assert sorted(gaps)[-2] < 1  # and only there
    no_leftovers(tmp_path)


@pytest.mark.slow
@pytest.mark.server
def test_sigterm_while_reconnecting_stops_at_once_with_complete_outputs(art, camera, tmp_path):
    proc, lines = infer([camera.url, "-m", art.onnx, "-q", "--json", "out.jsonl"], tmp_path)  # --reconnect 60
    wait_for_frames(tmp_path, proc)
    camera.kill()
    time.sleep(1.5)
    proc.send_signal(signal.SIGTERM)
    rc, out, took = finish(proc, lines, 10)
    assert rc == 130 and "interrupted after" in out and "Traceback" not in out, out
    assert took < 3
    assert len(records(tmp_path / "out.jsonl")) >= 5
    no_leftovers(tmp_path)


@pytest.fixture
def silent_server():
    """A TCP port on 127.0.0.1 that takes connections and never answers (a camera that hangs): socket, URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.settimeout(60)
        yield s, f"rtsp://127.0.0.1:{s.getsockname()[1]}/cam"


@pytest.mark.slow
@pytest.mark.server
def test_opening_a_stream_that_hangs_is_time_limited_and_interruptible(art, silent_server, tmp_path):
    from clo_export.data.live import OPEN_TIMEOUT

    server, url = silent_server
    proc, lines = infer([url, "-m", art.onnx, "-q", "--json", "out.jsonl"], tmp_path)
    held = [server.accept()[0]]  # clo-infer is opening the stream (the connection is held open, never answered)
    rc, out, took = finish(proc, lines, OPEN_TIMEOUT + 5)
    assert rc == 1 and "cannot open stream" in out and "Traceback" not in out, out
    assert took > OPEN_TIMEOUT - 1  # it waited as long as a camera may take, then no longer
    proc, lines = infer([url, "-m", art.onnx, "-q", "--json", "out.jsonl"], tmp_path)
    held.append(server.accept()[0])
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    rc, out, took = finish(proc, lines, OPEN_TIMEOUT)
    assert rc == 130 and "Traceback" not in out, out
    assert took < 2
    assert list(tmp_path.iterdir()) == []
    for conn in held:
        conn.close()


@pytest.mark.parametrize("value", ["-1", "nan", "inf"])
def test_reconnect_must_be_finite_seconds(art, value):
    res = CliRunner().invoke(app, [str(art.video), "-m", str(art.onnx), "--reconnect", value])
    assert res.exit_code == 1 and f"--reconnect {float(value)} must be a number of seconds >= 0" in res.output


@pytest.fixture
def hanging_up_server():
    """A TCP port on 127.0.0.1 that hangs up on every connection (a camera host whose camera is gone): URL, the
    seconds (monotonic) at which connections came."""
    came: list[float] = []
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        s.settimeout(0.1)

        def serve() -> None:
            while s.fileno() != -1:
                try:
                    conn, _ = s.accept()
                except (socket.timeout, OSError):
                    continue
                came.append(time.monotonic())
                conn.close()

        threading.Thread(target=serve, daemon=True).start()
        yield f"rtsp://127.0.0.1:{s.getsockname()[1]}/cam", came


@pytest.mark.server
def test_a_lost_stream_is_retried_with_backoff_until_the_reconnect_time(hanging_up_server):
    from clo_export.data.live import Reconnector, StreamLost

    url, came = hanging_up_server
    lost_at = time.monotonic()
    with pytest.raises(StreamLost, match=r"lost after 2\.0 s \(7 frames received\): the stream ended; retried for 4 s"):
        Reconnector(url, url, 4.0, threading.Event()).reopen("the stream ended", lost_at - 2, 7, lost_at)
    given_up = time.monotonic() - lost_at
    # 0.5 s, doubling (then capped by the time left: one last try at the end)
    assert [t - lost_at for t in came] == pytest.approx([0.5, 1.5, 3.5, 4.0], abs=0.3)
    assert 4 <= given_up < 4.6


@pytest.mark.server
def test_stop_ends_the_wait_for_a_lost_stream_at_once(hanging_up_server):
    from clo_export.data.live import Reconnector

    url, _ = hanging_up_server
    stop = threading.Event()
    threading.Timer(1.0, stop.set).start()
    t0 = time.monotonic()
    assert Reconnector(url, url, 60.0, stop).reopen("the stream ended", t0, 0, t0) is None
    assert time.monotonic() - t0 < 1.5
