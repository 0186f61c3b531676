"""Calibration sources: folders, globs, lists, videos; sampling, splitting, bad files; preprocessing identity."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from clo_export.data.preprocess import preprocess
from clo_export.errors import CloExportError
from clo_export.quantization.calibset import CalibrationData, Item, holdout_count, read_items, split_sources
from tests.helpers import write_images


def write_video(path: Path, n: int = 40, size: tuple[int, int] = (96, 128)) -> Path:
    """A real mp4v video whose frame k shows k in its pixel values (frames are distinguishable)."""
    h, w = size
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (w, h))
    assert writer.isOpened()
    for k in range(n):
        frame = np.full((h, w, 3), 40, np.uint8)
        cv2.rectangle(frame, (2 * k % w, 10), (2 * k % w + 20, 40), (0, 200, 255), -1)
        writer.write(frame)
    writer.release()
    return path


def test_folder_is_recursive_and_split_is_disjoint_and_seeded(tmp_path):
    write_images(tmp_path, 30)
    a = split_sources(tmp_path, num=20, holdout=5, seed=1)
    b = split_sources(tmp_path, num=20, holdout=5, seed=1)
    c = split_sources(tmp_path, num=20, holdout=5, seed=2)
    assert (a.calib, a.holdout) == (b.calib, b.holdout)
    assert a.calib != c.calib
    assert len(a.calib) == 20 and len(a.holdout) == 5 and a.found == 30
    assert not set(a.calib) & set(a.holdout)
    assert any("sub" in str(i.path) for i in a.calib + a.holdout)
    short = split_sources(tmp_path, num=20, holdout=15, seed=1, min_holdout=4)  # 30 < 35: --num kept, the rest held out
    assert (len(short.calib), len(short.holdout)) == (20, 10)
    assert [len(split_sources(tmp_path, num=n, holdout=15, min_holdout=4).holdout) for n in (28, 40)] == [
        6,
        6,
    ]  # a fifth at least


def test_glob_and_txt_list(tmp_path):
    paths = write_images(tmp_path, 24, nested=False)
    g = split_sources(str(tmp_path / "img_01*.jpg"), num=16, holdout=2, min_images=4)
    assert {i.path.name for i in g.calib + g.holdout} <= {f"img_01{k}.jpg" for k in range(10)}
    listing = tmp_path / "list.txt"
    listing.write_text("# calibration\n" + "\n".join(p.name for p in paths[:20]) + "\n")
    t = split_sources(listing, num=16, holdout=4)
    assert sorted(i.path for i in t.calib + t.holdout) == sorted(paths[:20])


def test_video_frames_are_sampled_evenly(tmp_path):
    video = write_video(tmp_path / "clip.mp4", n=40)
    s = split_sources(video, num=16, holdout=4)
    frames = sorted(i.frame for i in s.calib + s.holdout)
    assert len(frames) == 20 and frames[0] == 0 and frames[-1] == 39
    assert max(np.diff(frames)) <= 3  # spread over the whole clip, not the first 20 frames
    assert all(i.path == video for i in s.calib)


def test_unreadable_files_are_skipped_and_counted(tmp_path, caplog):
    write_images(tmp_path, 20)
    for k in range(3):
        (tmp_path / f"broken_{k}.jpg").write_bytes(b"not a jpeg")
    with caplog.at_level(logging.WARNING, logger="clo_export"):
        s = split_sources(tmp_path, num=256, holdout=4)
    assert len(s.skipped) == 3 and len(s.calib) == 16 and len(s.holdout) == 4
    assert "skipped 3 unreadable" in caplog.text and "200+ recommended" in caplog.text


def test_an_empty_set_is_an_error_and_a_small_one_calibrates_on_everything(tmp_path, caplog):
    (tmp_path / "empty").mkdir()
    with pytest.raises(CloExportError, match="holds no images"):
        split_sources(tmp_path / "empty")
    write_images(tmp_path / "few", 6)
    (tmp_path / "few" / "bad.png").write_bytes(b"\x89PNG broken")
    with caplog.at_level(logging.WARNING, logger="clo_export"):
        s = split_sources(tmp_path / "few")
    assert len(s.calib) == 6 and s.holdout == [] and s.skipped == [str(tmp_path / "few" / "bad.png")]
    assert s.unmeasured == "6 readable images: the held-out report needs 16 held out besides 16 to calibrate (32+)"
    small = [r.getMessage() for r in caplog.records if "readable images" in r.getMessage()]
    assert len(small) == 1 and "calibrating on all with none held out" in small[0]
    assert "not measured" in small[0] and "no automatic float fallback" in small[0]
    assert not any("calibration images (200+ recommended)" in r.getMessage() for r in caplog.records)  # one line


@pytest.mark.parametrize(
    "n, num, holdout, want",
    [
        (1, 256, 128, 0),
        (31, 256, 128, 0),  # 16 held out would leave 15 to calibrate
        (32, 256, 128, 16),
        (64, 256, 128, 16),  # a fifth would be 12: the report's 16 instead
        (100, 256, 128, 20),  # a fifth
        (300, 256, 128, 60),  # a fifth, more than the 44 --num leaves
        (350, 256, 128, 94),  # what --num leaves
        (384, 256, 128, 128),
        (50, 16, 0, 0),  # nothing asked for
    ],
)
def test_how_many_are_held_out(n, num, holdout, want):
    assert holdout_count(n, num, holdout) == want


def test_calibration_batch_equals_the_inference_preprocessing(tmp_path):
    """The exact arrays: what calibration feeds for an image is what preprocess() gives inference."""
    paths = write_images(tmp_path, 5, nested=False)
    data = CalibrationData([Item(p) for p in paths], (128, 128))
    feeds = list(data)
    assert len(feeds) == 5
    for path, feed in zip(sorted(paths), feeds):
        expected, _ = preprocess(cv2.imread(str(path)), (128, 128))
        assert feed["images"].dtype == np.float32 and feed["images"].shape == (1, 3, 128, 128)
        assert np.array_equal(feed["images"], expected)


def test_video_calibration_frames_equal_the_inference_path(tmp_path):
    from clo_export.data.files import read_images

    video = write_video(tmp_path / "clip.mp4", n=12)
    frames = list(read_images(video))  # what clo-infer decodes
    items = [Item(video, k) for k in (0, 5, 11)]
    got = [img for _, img in read_items(items)]
    assert all(np.array_equal(g, frames[k]) for g, k in zip(got, (0, 5, 11)))
    feeds = list(CalibrationData(items, (128, 256), batch=3))
    assert len(feeds) == 1 and feeds[0]["images"].shape == (3, 3, 128, 256)
    assert np.array_equal(feeds[0]["images"][1], preprocess(frames[5], (128, 256))[0][0])
