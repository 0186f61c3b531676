"""Checks of the shared test artifacts (tests/helpers.py): the video and the model are what the tests assume."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tests.helpers import scene


def test_the_test_video_has_the_frames_and_fps_it_was_written_with(art):
    cap = cv2.VideoCapture(str(art.video))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 24 and cap.get(cv2.CAP_PROP_FPS) == pytest.approx(12.0)
    cap.release()


def test_the_test_model_detects_something_that_depends_on_the_image(art):
    from clo_export.backends.select import load_runner
    from clo_export.data.preprocess import preprocess
    from clo_export.postprocess import nms

    runner, info = load_runner(art.onnx, "cpu")
    rng = np.random.default_rng(5)
    with runner:
        dets = [nms(runner.infer({"images": preprocess(scene(rng), info.imgsz)[0]})["output0"])[0] for _ in range(3)]
    assert all(len(d) > 0 for d in dets)
    assert not np.array_equal(dets[0][:, :4], dets[1][:, :4])
