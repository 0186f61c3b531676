"""Sinks write complete files under their final names only when closed; sources read what they promise."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from clo_export.data.readers import Frame, ImageSource, VideoSource, open_source
from clo_export.data.sinks import ImageDirSink, JsonlSink, ShowSink, VideoSink, annotated_names, draw_detections
from clo_export.errors import CloExportError
from tests.helpers import make_images, make_video, read_video

DETS = np.array([[10, 20, 60, 80, 0.9, 1], [0, 0, 5, 5, 0.3, 0]], dtype=np.float32)
NAMES = {0: "circle", 1: "square"}


def frames(n=5, size=(160, 120)):
    rng = np.random.default_rng(0)
    return [Frame(i, i / 10, rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), "cam") for i in range(n)]


def test_video_sink_appears_only_on_close_with_fps_size_and_frames(tmp_path):
    out = tmp_path / "out.mp4"
    sink = VideoSink(out, 7.0, (160, 120))
    for f in frames(5):
        sink.write(f, DETS, draw_detections(f.image, DETS, NAMES))
    sink.write(frames(1, (200, 100))[0], DETS[:0], None)  # another size is resized
    assert not out.exists() and len(list(tmp_path.iterdir())) == 1  # only the hidden temporary file
    sink.close()
    assert read_video(out) == (6, pytest.approx(7.0), (160, 120))
    assert [p.name for p in tmp_path.iterdir()] == ["out.mp4"]


def test_video_sink_abort_leaves_nothing(tmp_path):
    sink = VideoSink(tmp_path / "out.mp4", 10, (160, 120))
    sink.write(frames(1)[0], DETS, None)
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_video_sink_refuses_other_suffixes(tmp_path):
    with pytest.raises(CloExportError, match=".mp4"):
        VideoSink(tmp_path / "out.gif", 10, (16, 16))


def test_jsonl_records(tmp_path):
    out = tmp_path / "d.jsonl"
    sink = JsonlSink(out, NAMES)
    f0, f1 = frames(2)
    sink.write(f0, DETS, None)
    sink.write(f1, DETS[:0], None)
    assert not out.exists()
    sink.close()
    first, second = (json.loads(line) for line in out.read_text().splitlines())
    assert set(first) == {"frame", "timestamp", "source", "width", "height", "detections"}
    assert first["detections"][0] == {
        "class_id": 1,
        "class_name": "square",
        "score": 0.9,
        "xyxy": [10.0, 20.0, 60.0, 80.0],
    }
    assert second["frame"] == 1 and second["timestamp"] == 0.1 and second["detections"] == []


def test_image_dir_sink_keeps_names(tmp_path):
    imgs = make_images(tmp_path / "in", 2)
    sink = ImageDirSink(tmp_path / "out")
    for i, p in enumerate(imgs):
        sink.write(Frame(i, None, cv2.imread(str(p)), str(p)), DETS, None)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(p.name for p in imgs)


def test_show_without_a_display_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    with pytest.raises(CloExportError, match="--show needs"):
        ShowSink()


def test_draw_detections_leaves_the_input_alone():
    img = np.zeros((50, 50, 3), np.uint8)
    out = draw_detections(img, DETS, NAMES)
    assert out.any() and not img.any()
    assert np.array_equal(draw_detections(img, np.zeros((0, 6), np.float32), NAMES), img)


def test_video_source_reports_fps_size_count_and_timestamps(tmp_path):
    src = open_source(make_video(tmp_path / "v.mp4", frames=6, fps=5.0, size=(96, 64)))
    assert isinstance(src, VideoSource) and (src.fps, src.size, src.total) == (5.0, (96, 64), 6)
    got = [(f.index, f.timestamp, f.size) for f in src]
    assert got == [(i, i / 5.0, (96, 64)) for i in range(6)] and src.skipped == 0


def test_corrupt_frames_inside_a_video_are_skipped_and_counted(tmp_path):
    path = make_video(tmp_path / "v.avi", frames=20, fps=10.0, size=(160, 120), fourcc="MJPG")
    data = bytearray(path.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i : i + 3] == b"\xff\xd8\xff"]  # each frame's JPEG header
    assert len(starts) == 20
    data[starts[10] : starts[10] + 600] = bytes(600)  # frame 10 loses its JPEG header
    path.write_bytes(bytes(data))
    src = open_source(path)
    got = [f.index for f in src]
    assert src.skipped == 1 and 10 not in got and len(got) == 19 and got[-1] == 19


def test_truncated_video_counts_the_missing_tail(tmp_path):
    path = make_video(tmp_path / "v.avi", frames=20, fps=10.0, size=(160, 120), fourcc="MJPG")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    src = open_source(path)
    n = sum(1 for _ in src)
    assert 0 < n < 20 and n + src.skipped == 20


def test_unreadable_sources_are_clear_errors(tmp_path):
    garbage = tmp_path / "bad.mp4"
    garbage.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(CloExportError, match="cannot read video"):
        open_source(garbage)
    with pytest.raises(CloExportError, match="does not exist"):
        open_source(tmp_path / "missing.mp4")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CloExportError, match="holds no images"):
        open_source(tmp_path / "empty")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(CloExportError, match="neither an image"):
        open_source(tmp_path / "notes.txt")


def test_folder_and_glob_sources_skip_unreadable_images(tmp_path):
    make_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "broken.jpg").write_bytes(b"not a jpeg")
    src = open_source(tmp_path / "imgs")
    assert isinstance(src, ImageSource) and src.total == 4
    got = list(src)
    assert len(got) == 3 and src.skipped == 1 and all(f.timestamp is None for f in got)
    assert len(list(open_source(str(tmp_path / "imgs" / "*.png")))) == 1
    assert len(list(open_source(tmp_path / "imgs", limit=2))) == 2


def test_annotated_names_keep_folders_and_are_unique_and_stable(tmp_path):
    files = [tmp_path / "in" / rel for rel in ("a/x.jpg", "a/x_2.jpg", "b/x.jpg", "b/X.JPG", "a/x.jpg", "c/y.gif")]
    names = annotated_names(files, set())
    assert {k: v.as_posix() for k, v in names.items()} == {
        str(files[0]): "a/x.jpg",
        str(files[1]): "a/x_2.jpg",
        str(files[2]): "b/x.jpg",
        str(files[3]): "b/X~2.JPG",
        str(files[5]): "c/y.jpg",
    }  # the same file twice is one output; a suffix OpenCV cannot write becomes .jpg
    assert annotated_names(list(files), set()) == names


def test_json_lines_to_a_device_are_written_directly(tmp_path):
    sink = JsonlSink("/dev/null", {0: "a"})
    sink.write(Frame(0, None, np.zeros((4, 4, 3), np.uint8), "x.jpg"), DETS, None)
    sink.close()
    assert sink.outputs == [Path("/dev/null")] and not list(Path("/dev").glob(".null.part*"))
