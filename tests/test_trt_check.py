"""The engine checks itself: build_engine runs the new engine against ONNX Runtime on the FP32 ONNX.

TensorRT cannot run here, so the engine is played by a stand-in Runner subclass: ONNX Runtime on the
ONNX the engine was built from (what a correct engine computes), optionally with a planted miscompile
(box centres shifted). The build itself goes through Polygraphy's real loaders with the recording
tensorrt of tests/test_trt_build_polygraphy.py; the comparison is the real one (bundled demo model,
demo-generator frames). The same check on a real engine: tests/test_trt_gpu.py (``pytest -m gpu``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from clo_export.backends.onnxrt import OnnxRuntimeRunner
from clo_export.demo.run import BUNDLED_MODEL
from clo_export.engine.check import check_engine, reference_onnx
from clo_export.engine.plan import BuildRequest
from tests.test_trt_cli import run

pytestmark = pytest.mark.skipif(not BUNDLED_MODEL.is_file(), reason="bundled demo model not built")
IMGSZ = (256, 256)


class OnnxAsEngine(OnnxRuntimeRunner):
    """A TensorRT stand-in: ONNX Runtime on ``onnx``; ``shift`` px added to every box centre plants a miscompile."""

    name = "tensorrt stand-in"

    def __init__(self, onnx: Path, shift: float = 0.0):
        super().__init__(onnx, providers=["CPUExecutionProvider"])
        self.shift = shift

    def infer_impl(self, feed: dict) -> dict:
        out = super().infer_impl(feed)
        boxes = np.array(out["output0"], dtype=np.float32)
        boxes[..., :2] += self.shift
        return {**out, "output0": boxes}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """The bundled demo model exported FP32 (demo.onnx) and --half (demo.fp16.onnx) side by side."""
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load

    root = tmp_path_factory.mktemp("engine-check")
    loaded = load(BUNDLED_MODEL)
    export_onnx(loaded, root / "demo.onnx", ExportOptions(imgsz=IMGSZ, simplifier="none"))
    export_onnx(loaded, root / "demo.fp16.onnx", ExportOptions(imgsz=IMGSZ, simplifier="none", half=True))
    return root


def facts_of(path: Path):
    from clo_export.artifacts import load_onnx
    from clo_export.engine.onnx_facts import onnx_facts

    return onnx_facts(load_onnx(path), path.name)


def test_a_correct_engine_passes_and_a_miscompiled_one_fails(demo):
    onnx = demo / "demo.onnx"
    good = check_engine(Path("x.engine"), onnx, facts_of(onnx), "fp32", 1, engine_runner=lambda _: OnnxAsEngine(onnx))
    assert good and good.status == "passed" and good.reference == "demo.onnx" and good.frames == "8 sample frames"
    assert good.report.n_inputs == 8 and good.report.detections.n_ref > 0  # the frames have boxes to compare
    bad = check_engine(
        Path("x.engine"), onnx, facts_of(onnx), "fp32", 1, engine_runner=lambda _: OnnxAsEngine(onnx, shift=2.0)
    )
    assert not bad and bad.status == "failed"
    assert any(f.startswith("output0.boxes") for f in bad.report.failures), bad.report.failures
    side = bad.to_dict()
    assert side["passed"] is False and side["failures"] and "boxes |diff| <=" in side["limits"]


def test_the_reference_is_the_fp32_onnx_beside_an_fp16_one(demo, tmp_path):
    fp16 = demo / "demo.fp16.onnx"
    path, why = reference_onnx(fp16, facts_of(fp16))
    assert path == demo / "demo.onnx" and why == "the FP32 ONNX beside demo.fp16.onnx"
    alone = tmp_path / "demo.fp16.onnx"
    shutil.copy(fp16, alone)
    path, why = reference_onnx(alone, facts_of(alone))
    assert path == alone and why.startswith("the fp16 ONNX it was built from: no FP32 ONNX")
    other = tmp_path / "demo.onnx"  # an FP32 ONNX of another size beside it is not its reference
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load

    export_onnx(load(BUNDLED_MODEL), other, ExportOptions(imgsz=(128, 128), simplifier="none"))
    assert reference_onnx(alone, facts_of(alone))[0] == alone


def test_an_fp16_engine_is_judged_against_fp32_by_the_fp16_rule(demo):
    fp16 = demo / "demo.fp16.onnx"  # the stand-in runs the FP16 ONNX, as an FP16 engine computes in FP16
    result = check_engine(Path("x.engine"), fp16, facts_of(fp16), "fp16", 1, engine_runner=lambda _: OnnxAsEngine(fp16))
    assert result.reference == "demo.onnx" and result.report.precision == "fp16"
    assert result, result.report.failures


def test_build_engine_records_a_failed_check_and_keeps_the_engine(demo, fake_trt, tmp_path):
    from clo_export.engine.build import build_engine

    fake_trt("10.3.0")
    onnx = demo / "demo.onnx"
    out = tmp_path / "demo.engine"
    built = build_engine(onnx, BuildRequest(), out, engine_runner=lambda _: OnnxAsEngine(onnx, shift=2.0))
    assert not built and out.is_file()
    parity = json.loads(Path(f"{out}.json").read_text())["parity"]
    assert parity["status"] == "failed" and parity["reference"] == "demo.onnx" and parity["failures"]
    assert parity["report"]["passed"] is False
    unchecked = build_engine(onnx, BuildRequest(), tmp_path / "u.engine", check=False)
    assert unchecked and unchecked.check is None
    assert json.loads((tmp_path / "u.engine.json").read_text())["parity"]["status"] == "not checked"


@pytest.mark.parametrize(
    "shift, code, words",
    [
        (0.0, 0, ["check passed: vs demo.onnx (the FP32 ONNX it was built from), 8 sample frames"]),
        (
            2.0,
            1,
            [
                "failure: output0.boxes",
                "the engine does not match demo.onnx within the fp32 tolerance",
                "marked failed in demo.engine.json",
            ],
        ),
    ],
)
def test_trt_command_exits_1_on_a_planted_miscompile(demo, fake_trt, tmp_path, monkeypatch, shift, code, words):
    fake_trt("10.3.0")
    onnx = tmp_path / "demo.onnx"
    shutil.copy(demo / "demo.onnx", onnx)
    monkeypatch.setattr("clo_export.engine.check.open_engine", lambda _: OnnxAsEngine(onnx, shift))
    result, out = run(onnx)
    assert result.exit_code == code, out
    for w in words:
        assert w in out, w
    assert (tmp_path / "demo.engine").is_file() and "Traceback" not in result.output
    parity = json.loads((tmp_path / "demo.engine.json").read_text())["parity"]
    assert parity["passed"] is (code == 0)


def test_no_check_skips_and_says_so(demo, fake_trt, tmp_path, monkeypatch):
    fake_trt("10.3.0")
    onnx = tmp_path / "demo.onnx"
    shutil.copy(demo / "demo.onnx", onnx)
    monkeypatch.setattr("clo_export.engine.check.open_engine", lambda _: OnnxAsEngine(onnx, 2.0))  # never run
    result, out = run(onnx, "--no-check")
    assert result.exit_code == 0 and "check not checked (--no-check)" in out, out
    parity = json.loads((tmp_path / "demo.engine.json").read_text())["parity"]
    assert parity == {"status": "not checked", "passed": None}


def test_calibration_images_are_the_check_frames_when_given(demo, tmp_path):
    from clo_export.engine.check import check_feeds
    from tests.helpers import write_images

    write_images(tmp_path / "calib", 12)
    facts = facts_of(demo / "demo.onnx")
    feeds, frames = check_feeds(facts, 2, [str(tmp_path / "calib")])
    assert frames == "8 calibration images" and len(feeds) == 4
    assert all(f["images"].shape == (2, 3, *IMGSZ) for f in feeds)
    cache = tmp_path / "m.entropy.cache"  # a calibration cache holds no frames: sample frames instead
    cache.write_bytes(b"cache")
    assert check_feeds(facts, 1, [str(cache)])[1] == "8 sample frames"


def test_the_public_build_engine_checks_like_the_command(demo, fake_trt, tmp_path, monkeypatch):
    import clo_export

    fake_trt("10.3.0")
    onnx = tmp_path / "demo.onnx"
    shutil.copy(demo / "demo.onnx", onnx)
    monkeypatch.setattr("clo_export.engine.check.open_engine", lambda _: OnnxAsEngine(onnx, 2.0))
    built = clo_export.build_engine(onnx, out=tmp_path / "a.engine")
    assert not built and json.loads((tmp_path / "a.engine.json").read_text())["parity"]["status"] == "failed"
    skipped = clo_export.build_engine(onnx, out=tmp_path / "b.engine", check=False)
    assert skipped and json.loads((tmp_path / "b.engine.json").read_text())["parity"]["status"] == "not checked"
