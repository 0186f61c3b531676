"""The threaded pipeline: same results as the sequential loop, batching, interruption, stats, postprocessing."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from clo_export.backends.base import Runner, TensorSpec
from clo_export.backends.select import load_runner
from clo_export.data.preprocess import LetterboxInfo
from clo_export.data.readers import open_source
from clo_export.data.sinks import JsonlSink, VideoSink
from clo_export.errors import CloExportError
from clo_export.pipeline import InferOptions, Pipeline, StageTimer
from clo_export.postprocess import Postprocessor
from tests.helpers import InterruptingSource, read_video


class FixedBatchRunner(Runner):
    """An ONNX Runtime model presented as a fixed batch-4 model, run row by row (tests padding)."""

    name = "fixed-batch"

    def __init__(self, inner):
        super().__init__()
        self.inner, self.batches = inner, []

    def activate_impl(self):
        self.inner.activate()

    def deactivate_impl(self):
        self.inner.deactivate()

    def input_specs_impl(self):
        return [TensorSpec("images", (4, 3, 128, 128), np.dtype(np.float32))]

    def infer_impl(self, feed):
        x = feed["images"]
        assert x.shape[0] == 4
        self.batches.append(x)
        outs = [self.inner.infer({"images": x[i : i + 1]})["output0"] for i in range(4)]
        return {"output0": np.concatenate(outs)}


class SlowFirstRunner(Runner):
    """A real ONNX Runtime runner that can hold its first batch back, so another stream overtakes it."""

    name = "slow-first"

    def __init__(self, inner, delay=0.0):
        super().__init__()
        self.inner, self.delay, self.calls, self.started = inner, delay, 0, []
        self.released = 0.0  # when the first call came back from its delay

    def activate_impl(self):
        self.inner.activate()

    def deactivate_impl(self):
        self.inner.deactivate()

    def input_specs_impl(self):
        return self.inner.input_specs()

    def infer_impl(self, feed):
        self.calls += 1
        self.started.append(time.perf_counter())
        if self.calls == 1:
            time.sleep(self.delay)
            self.released = time.perf_counter()
        return self.inner.infer(feed)


def streams(art, delays):
    return [SlowFirstRunner(load_runner(art.onnx, "cpu", threads=1)[0], d) for d in delays]


def run_streams(art, runners, sinks, source=None):
    _, info = load_runner(art.onnx, "cpu")
    for r in runners:
        r.activate()
    try:
        return Pipeline(source or open_source(art.video), runners, info, list(sinks), InferOptions()).run()
    finally:
        for r in runners:
            r.deactivate()


def run(art, threaded=True, batch=1, runner=None, sinks=(), source=None, limit=None):
    r, info = load_runner(art.onnx, "cpu")
    runner = runner or r
    with runner:
        return Pipeline(
            source or open_source(art.video, limit), runner, info, list(sinks), InferOptions(batch=batch)
        ).run(threaded=threaded), runner


def lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_threaded_sequential_and_batched_runs_give_the_same_detections(art, tmp_path):
    outs = {}
    for name, kw in {"threaded": {}, "sequential": {"threaded": False}}.items():
        res, _ = run(art, sinks=[JsonlSink(tmp_path / f"{name}.jsonl", {})], **kw)
        assert res.frames == 24 and not res.interrupted and res.detections > 0
        assert set(res.stages) == {"decode", "preprocess", "inference", "postprocess", "encode"}
        outs[name] = lines(tmp_path / f"{name}.jsonl")
    inner, _ = load_runner(art.onnx, "cpu")
    fixed = FixedBatchRunner(inner)
    res, _ = run(art, batch=4, runner=fixed, limit=22, sinks=[JsonlSink(tmp_path / "b.jsonl", {})])
    assert res.batch == 4 and res.frames == 22 and len(fixed.batches) == 6
    assert not fixed.batches[-1][2:].any()  # the last batch of 2 was padded with zeros
    assert outs["threaded"] == outs["sequential"]
    assert lines(tmp_path / "b.jsonl") == outs["threaded"][:22]


def test_several_inference_streams_keep_the_source_order_and_a_bounded_lead(art, tmp_path):
    run(art, threaded=False, sinks=[JsonlSink(tmp_path / "seq.jsonl", {})])
    runners = streams(art, [0.3, 0.0, 0.0])  # stream 0 holds frame 0 while the others run ahead
    src = open_source(art.video)
    res = run_streams(
        art,
        runners,
        [JsonlSink(tmp_path / "multi.jsonl", {}), VideoSink(tmp_path / "multi.mp4", src.fps, src.size)],
        src,
    )
    assert res.streams == 3 and res.frames == 24 and res.stages["inference"].count == 24
    ahead = sum(t < runners[0].released for r in runners[1:] for t in r.started)
    assert ahead == InferOptions().queue_size + 3 - 1  # overtaken, but only as far as the free slots allow
    assert lines(tmp_path / "multi.jsonl") == lines(tmp_path / "seq.jsonl")
    assert read_video(tmp_path / "multi.mp4") == (24, pytest.approx(12.0), (320, 240))


def test_ctrl_c_with_several_streams_leaves_complete_outputs_in_order(art, tmp_path):
    src = open_source(art.video)
    res = run_streams(art, streams(art, [0.1, 0.0]), [JsonlSink(tmp_path / "o.jsonl", {})], InterruptingSource(src, 9))
    assert res.interrupted and res.frames == 9
    assert [r["frame"] for r in lines(tmp_path / "o.jsonl")] == list(range(9))


def test_an_error_in_one_stream_stops_every_stage_and_discards_the_outputs(art, tmp_path):
    class Broken(SlowFirstRunner):
        def infer_impl(self, feed):
            if self.calls == 2:
                raise CloExportError("stream failed")
            return super().infer_impl(feed)

    runners = [*streams(art, [0.0]), Broken(load_runner(art.onnx, "cpu", threads=1)[0])]
    with pytest.raises(CloExportError, match="stream failed"):
        run_streams(art, runners, [JsonlSink(tmp_path / "o.jsonl", {})])
    assert list(tmp_path.iterdir()) == []


def test_fixed_batch_model_refuses_another_batch(art):
    inner, _ = load_runner(art.onnx, "cpu")
    with pytest.raises(CloExportError, match="fixed batch of 4"):
        run(art, batch=3, runner=FixedBatchRunner(inner))


@pytest.mark.parametrize("threaded", [True, False])
def test_ctrl_c_in_the_source_leaves_a_playable_video_and_complete_jsonl(art, tmp_path, threaded):
    src = open_source(art.video)
    sinks = [VideoSink(tmp_path / "out.mp4", src.fps, src.size), JsonlSink(tmp_path / "out.jsonl", {})]
    res, _ = run(art, threaded=threaded, sinks=sinks, source=InterruptingSource(src, 7))
    assert res.interrupted and res.frames == 7
    assert read_video(tmp_path / "out.mp4") == (7, pytest.approx(12.0), (320, 240))
    assert [r["frame"] for r in lines(tmp_path / "out.jsonl")] == list(range(7))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl", "out.mp4"]  # no temporary files left


def test_an_error_in_a_stage_discards_the_outputs_and_is_raised(art, tmp_path):
    class Broken(FixedBatchRunner):
        def input_specs_impl(self):
            return [TensorSpec("images", (1, 3, 128, 128), np.dtype(np.float32))]

        def infer_impl(self, feed):
            raise CloExportError("boom")

    src = open_source(art.video)
    inner, _ = load_runner(art.onnx, "cpu")
    with pytest.raises(CloExportError, match="boom"):
        run(art, runner=Broken(inner), sinks=[VideoSink(tmp_path / "o.mp4", src.fps, src.size)], source=src)
    assert list(tmp_path.iterdir()) == []


def test_stage_timer_percentiles():
    t = StageTimer("x")
    for ms in range(1, 101):
        t.add(ms / 1e3)
    t.add(0.2, frames=4)  # a batch of 4 counts 50 ms per frame
    s = t.stats()
    ms = [*range(1, 101), 50, 50, 50, 50]
    assert s.count == 104 and s.mean_ms == pytest.approx(np.mean(ms))
    assert (s.p50_ms, s.p95_ms) == (pytest.approx(np.percentile(ms, 50)), pytest.approx(np.percentile(ms, 95)))


LB = LetterboxInfo(ratio=0.5, pad=(0, 16), orig_shape=(192, 256), new_shape=(128, 128))


def test_postprocess_raw_output_maps_boxes_to_the_original_frame_and_handles_empty_frames():
    pred = np.zeros((2, 10, 7), np.float32)
    pred[0, 0] = [64, 64, 20, 20, 0.9, 0.9, 0.1]  # xywh in the 128x128 input
    dets = Postprocessor(InferOptions())({"output0": pred}, [LB, LB])
    np.testing.assert_allclose(dets[0], [[108, 76, 148, 116, 0.81, 0]], rtol=1e-5)
    assert dets[1].shape == (0, 6)


def test_postprocess_in_graph_nms_outputs_respects_conf_classes_and_max_det():
    outputs = {
        "num_dets": np.array([[3]], np.int64),
        "boxes": np.array([[[0, 16, 10, 26], [20, 36, 30, 46], [40, 56, 50, 66], [0, 0, 0, 0]]], np.float32),
        "scores": np.array([[0.9, 0.5, 0.3, 0]], np.float32),
        "classes": np.array([[0, 1, 0, 0]], np.int64),
    }
    post = Postprocessor(InferOptions(conf=0.4))
    np.testing.assert_allclose(post(outputs, [LB])[0], [[0, 0, 20, 20, 0.9, 0], [40, 40, 60, 60, 0.5, 1]])
    assert len(Postprocessor(InferOptions(classes=(1,)))(outputs, [LB])[0]) == 1
    assert len(Postprocessor(InferOptions(max_det=1))(outputs, [LB])[0]) == 1


def test_options_are_validated():
    with pytest.raises(CloExportError):
        InferOptions(conf=2).validate()
    with pytest.raises(CloExportError):
        InferOptions(batch=0).validate()
