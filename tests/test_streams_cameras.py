"""Several streams over time: a stream that ends closes its own outputs at once while the others go on, and four real
RTSP cameras in one clo-infer run where one is killed and comes back (tests/rtsp_camera.py on 127.0.0.1)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from clo_export.backends.select import load_runner
from clo_export.data.readers import open_source
from clo_export.data.sinks import Sink, VideoSink
from clo_export.data.streams import MultiSource
from clo_export.pipeline import InferOptions, Pipeline
from tests.helpers import make_video, read_video


class Probe(Sink):
    """A sink of the long stream: at each of its frames, what the output folder holds; when 0.mp4 first appears, its
    frame count then."""

    def __init__(self, out: Path, fail_at: int | None = None):
        self.out, self.fail_at = out, fail_at
        self.seen: list[tuple[int, list[str]]] = []  # (frame index, files in the folder)
        self.shown: tuple[int, int] | None = None  # (frame index, frames of 0.mp4) when 0.mp4 first appeared

    def write(self, frame, dets, annotated) -> None:
        files = sorted(p.name for p in self.out.iterdir())
        if self.shown is None and "0.mp4" in files:
            self.shown = (frame.index, read_video(self.out / "0.mp4")[0])
        self.seen.append((frame.index, files))
        if frame.index == self.fail_at:
            raise OSError("planted: the long stream's disk fails")


@pytest.fixture(scope="module")
def clips(art, tmp_path_factory):
    """A 10-frame and a 60-frame video (different content)."""
    root = tmp_path_factory.mktemp("ending")
    return make_video(root / "short.mp4", 10, seed=4), make_video(root / "long.mp4", 60, seed=5)


def run_two(art, first: str, limit: int | None, long: Path, out: Path, fail_at: int | None = None):
    """Stream 0 (``first``, ``limit`` frames at most) and the long video, each with its own annotated video; the run's
    result and the probe on stream 1."""
    runner, info = load_runner(art.onnx, "cpu")
    stop = threading.Event()
    sources = [open_source(first, limit, stop=stop), open_source(str(long), stop=stop)]
    probe = Probe(out, fail_at)
    own = [
        [VideoSink(out / "0.mp4", sources[0].fps, sources[0].size)],
        [VideoSink(out / "1.mp4", sources[1].fps, sources[1].size), probe],
    ]
    with runner:
        result = Pipeline(MultiSource(sources, stop), runner, info, [], InferOptions(), stream_sinks=own).run()
    return result, probe


@pytest.mark.parametrize("how", ["file-ends", "limit-reached"])
def test_a_stream_that_ends_has_its_video_complete_while_the_others_go_on(art, clips, tmp_path, how):
    short, long = clips
    first, limit = (str(short), None) if how == "file-ends" else (str(long), 10)
    result, probe = run_two(art, first, limit, long, tmp_path)
    assert [s.frames for s in result.per_stream] == [10, 60]
    # files advance in turn (0,1,0,1,…): stream 0's end is taken before stream 1's frame 10 is read, so its video is
    # closed at the latest right after stream 1's frame 10 is written, and complete under its name from then on
    assert probe.shown is not None and 9 <= probe.shown[0] <= 11 and probe.shown[1] == 10, probe.seen[:14]
    for i, files in probe.seen:
        if i < probe.shown[0]:
            assert "0.mp4" not in files  # never there half-written: it appears complete
        else:  # and its temporary file is gone (stream 1's video is still being written)
            assert [f for f in files if not f.startswith(".1.part")] == ["0.mp4"], (i, files)
    assert read_video(tmp_path / "0.mp4")[0] == 10 and read_video(tmp_path / "1.mp4")[0] == 60
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.mp4", "1.mp4"]


def test_a_run_that_fails_later_keeps_the_ended_streams_video_and_leaves_nothing_half_written(art, clips, tmp_path):
    short, long = clips
    with pytest.raises(OSError, match="planted"):
        run_two(art, str(short), None, long, tmp_path, fail_at=30)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["0.mp4"]  # 1.mp4's temporary file discarded
    assert read_video(tmp_path / "0.mp4")[0] == 10


# ---- four real cameras, one killed for 5 s and back on the same port
CAMERA_FPS = 15  # tests/rtsp_camera.py's default rate
OUTAGE = 5.0  # seconds camera 2 is away


@pytest.fixture
def four_cameras():
    """Four RTSP cameras on 127.0.0.1, each its own process; killed at the end."""
    from tests.cameras import running_cameras

    with running_cameras(4, seconds=120) as cams:
        yield cams


def json_records(folder: Path) -> list[dict]:
    """The JSON Lines written so far (the temporary file while the run goes on, the final one after)."""
    done = folder / "out.jsonl"
    paths = [done] if done.exists() else [p for p in folder.iterdir() if p.name.startswith(".out.part")]
    recs = []
    for path in paths:
        try:
            text = path.read_text()
        except FileNotFoundError:  # renamed under us: the run ended
            return json_records(folder)
        recs += [json.loads(line) for line in text.splitlines() if line.endswith("}")]
    return recs


def outage_gap(recs: list[dict]) -> float:
    """The longest gap between stream 2's frames (seconds, on the records' clock)."""
    stamps = [r["timestamp"] for r in recs if r["stream"] == 2]
    return max((b - a for a, b in zip(stamps, stamps[1:])), default=0.0)


def wait_until(what: str, condition, proc, deadline: float, poll: float = 0.1):
    """``condition()``'s first true value, checked every ``poll`` s until ``deadline`` (time.monotonic())."""
    while True:
        value = condition()
        if value:
            return value
        assert proc.poll() is None, f"clo-infer ended while waiting for {what}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(poll)


@pytest.mark.slow
@pytest.mark.server
def test_four_cameras_one_killed_for_5_s_resumes_within_5_s_and_the_others_lose_no_frame(art, four_cameras, tmp_path):
    from tests.test_live_sources import finish, infer

    t_start = time.monotonic()
    deadline = t_start + 80  # the whole test stays under 90 s
    limit = 300  # ~20 s at 15 fps per camera: far beyond the outage, ends the run by itself
    urls = [c.url for c in four_cameras]
    proc, lines = infer(
        [*urls, "-m", art.onnx, "-q", "--json", "out.jsonl", "--reconnect", 30, "--limit", limit], tmp_path
    )
    try:
        # every stream delivers before the kill
        wait_until(
            "frames of all four", lambda: {r["stream"] for r in json_records(tmp_path)} == {0, 1, 2, 3}, proc, deadline
        )
        killed = four_cameras[2]
        killed.kill()
        t_kill = time.monotonic()
        wait_until("the outage", lambda: time.monotonic() - t_kill >= OUTAGE, proc, deadline, poll=0.05)
        killed.start(seconds=120)  # the same port: the same URL
        t_back = time.monotonic()
        wait_until("stream 2 to resume", lambda: outage_gap(json_records(tmp_path)) >= OUTAGE, proc, t_back + 20)
        waited = time.monotonic() - t_back  # on the test's clock, including the JSON Lines' write buffer
        rc, out, _ = finish(proc, lines, max(5.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 0, out
    recs = json_records(tmp_path)
    rows = {int(r[0]): r for r in stream_rows(out)}
    assert sorted(rows) == [0, 1, 2, 3]
    for i in (0, 1, 3):  # untouched cameras: every frame received is written or counted as dropped, none lost
        mine = [r for r in recs if r["stream"] == i]
        written, dropped, reconnects = len(mine), int(rows[i][4]), int(rows[i][5])
        assert written == int(rows[i][3]) and written + dropped == limit, (i, rows[i])
        assert mine[-1]["frame"] == limit - 1 and reconnects == 0
        frames = [r["frame"] for r in mine]
        assert frames == sorted(set(frames)) and set(frames) <= set(range(limit))  # in order, once each
        assert len(set(range(limit)) - set(frames)) == dropped  # the only gaps in the indices: the counted drops
    gap = outage_gap(recs)  # the outage, on the records' clock
    # the camera came back (t_back - t_kill) s after the kill; the last frame before the gap is the kill at the latest
    resumed = gap - (t_back - t_kill)
    assert resumed <= 5.0, f"stream 2 resumed {resumed:.1f} s after its camera came back (seen {waited:.1f} s)\n{out}"
    assert int(rows[2][5]) >= 1  # the per-stream table shows the reconnect
    assert time.monotonic() - t_start < 90


def stream_rows(out: str) -> list[list[str]]:
    """The per-stream table's rows: stream, source, FPS, frames, drops, reconnects, p50 ms, p95 ms."""
    rows = [[c.strip() for c in line.split("│") if c.strip()] for line in out.splitlines()]
    return [r for r in rows if len(r) == 8 and r[0].isdigit()]
