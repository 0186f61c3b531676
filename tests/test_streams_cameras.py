"""Several streams over time: a stream that ends closes its own outputs at once while the others go on."""

from __future__ import annotations

import threading
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
