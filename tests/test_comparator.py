"""The one comparison runner: feeds under each runner's own input name, the raw and in-graph-NMS rules."""

from __future__ import annotations

import numpy as np
import pytest

from clo_export.backends.pytorch import TorchRunner
from clo_export.backends.select import load_runner
from clo_export.comparator import Comparator, Comparison, Thresholds, feed_for
from clo_export.data.preprocess import preprocess_batch
from clo_export.errors import CloExportError
from clo_export.models.checkpoint import load
from clo_export.postprocess import decoded_output
from tests.helpers import IMGSZ, scene


def frames(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [preprocess_batch([scene(rng)], IMGSZ)[0] for _ in range(n)]


def test_both_runners_get_each_feed_under_their_own_input_name(art):
    runner, info = load_runner(art.onnx, "cpu")
    reference = TorchRunner(load(art.pt).model, "cpu", input_name="x")  # not the ONNX's "images"
    feeds = [{"frame": x} for x in frames()]
    with runner, reference:
        report = Comparator(reference, Comparison(info.precision)).report(runner, feeds)
        assert report and report.n_inputs == 3
        assert set(report.tensors) == {"output0.boxes", "output0.objectness", "output0.classes"}
        assert report.detections.f1 == 1.0 and report.detections.n_ref > 0
        with TorchRunner(load(art.other_pt).model, "cpu") as wrong:  # a reference the model was not made from
            assert not Comparator(wrong, Comparison(info.precision)).report(runner, feeds)


def test_in_graph_nms_is_judged_on_detections_at_the_graphs_thresholds(art):
    runner, info = load_runner(art.nms_onnx, "cpu")
    assert info.nms and Thresholds(conf=0.9).for_model(info) == Thresholds(
        info.nms_conf, info.nms_iou, info.nms_max_det
    )
    with runner, TorchRunner(load(art.pt).model, "cpu") as reference:
        compared = list(
            Comparator(reference, Comparison("fp32", Thresholds(conf=0.9).for_model(info))).run(
                runner, [{"images": x} for x in frames(2)]
            )
        )
    assert [c.report.tensors for c in compared] == [{}, {}]  # padded fixed-size outputs: detections only
    assert all(c.report and c.report.detections.f1 == 1.0 for c in compared)
    assert sum(len(c.ref_dets[0]) for c in compared) > 0


def test_a_feed_that_does_not_fit_the_model_is_refused_with_its_names(art):
    runner, _ = load_runner(art.onnx, "cpu")
    with runner, pytest.raises(
        CloExportError, match=r"inputs \['a', 'b'\] but the onnxruntime model takes \['images'\]"
    ):
        feed_for(runner, {"a": np.zeros(1), "b": np.zeros(1)})


def test_outputs_without_a_decoded_tensor_are_refused() -> None:
    with pytest.raises(
        CloExportError, match=r"no output of shape \(batch, anchors, 5 \+ classes\) among feat \(1, 8\)"
    ):
        decoded_output({"feat": np.zeros((1, 8), np.float32)})


def planted(nms_onnx, out, factor: float = 1.0001):
    """The NMS model with output0 scaled by ``factor`` before its NMS tail: scores move 1e-4, detections do not."""
    import onnx
    from onnx import helper, numpy_helper

    proto = onnx.load(str(nms_onnx))
    for node in proto.graph.node:
        node.input[:] = ["output0_planted" if i == "output0" else i for i in node.input]
    producer = next(n for n in proto.graph.node if "output0" in n.output)
    producer.output[:] = ["output0_pre" if o == "output0" else o for o in producer.output]
    proto.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "plant_factor"))
    index = list(proto.graph.node).index(producer) + 1
    proto.graph.node.insert(index, helper.make_node("Identity", ["output0_planted"], ["output0"], name="plant_id"))
    plant = helper.make_node("Mul", ["output0_pre", "plant_factor"], ["output0_planted"], name="plant")
    proto.graph.node.insert(index, plant)
    onnx.save(proto, str(out))
    return out


def test_the_raw_head_of_an_nms_model_is_the_raw_export(art):
    import onnx

    from clo_export.comparator import raw_head_runner
    from clo_export.export.nms_graph import has_nms_tail, without_nms

    raw = raw_head_runner(art.nms_onnx)
    assert raw_head_runner(art.onnx) is None and not has_nms_tail(without_nms(onnx.load(str(art.nms_onnx))))
    runner, _ = load_runner(art.onnx, "cpu")
    with raw, runner:
        for x in frames(2):
            cut, plain = raw.infer({"images": x}), runner.infer({"images": x})
            assert set(cut) == {"output0"} and np.array_equal(cut["output0"], plain["output0"])
    with pytest.raises(CloExportError, match="no in-graph NMS tail"):
        without_nms(onnx.load(str(art.onnx)))


def test_raw_pre_nms_compare_catches_what_detections_alone_miss(art, tmp_path):
    from clo_export.comparator import raw_head_runner
    from clo_export.report import Verdict

    model = planted(art.nms_onnx, tmp_path / "planted.onnx")
    runner, info = load_runner(model, "cpu")
    feeds = [{"images": x} for x in frames(2)]
    comparison = Comparison("fp32", Thresholds().for_model(info))
    with runner, TorchRunner(load(art.pt).model, "cpu") as reference, raw_head_runner(model) as raw:
        detections_only = Comparator(reference, comparison).report(runner, feeds)
        assert detections_only and detections_only.detections.f1 == 1.0 and detections_only.detections.n_ref > 0
        both = Comparator(reference, comparison, raw).report(runner, feeds)
    assert both.verdict is Verdict.FAILED and both.detections.f1 == 1.0
    assert [f.split(":")[0] for f in both.failures] == ["output0.objectness", "output0.classes"]
