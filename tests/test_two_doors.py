"""Every guard through both doors: the same bad input to the library and to the command line gives the same
refusal, word for word (the library raises CloExportError(msg); the CLI prints ``error: msg`` and exits 1).

Real inputs (the ``ws`` folder: m.pt, m.onnx, v.mp4, imgs/); every refusal comes before any model is loaded
or any file written, so nothing here waits on an export.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

import clo_export
from clo_export.engine.build import build_engine
from clo_export.engine.plan import BuildRequest
from clo_export.errors import CloExportError
from clo_export.export.exporter import ExportOptions
from clo_export.pipeline import InferOptions

runner = CliRunner()


def export(out=None, model="m.pt", **options):
    return lambda: clo_export.export_onnx(model, out, ExportOptions(**options), check=False)


def infer(**options):
    return lambda: InferOptions(**options).validate()


def check(json_out=None, limit=200, **options):
    return lambda: clo_export.check_model(
        "m.onnx", "m.pt", "v.mp4", InferOptions(**options), limit=limit, json_out=json_out
    )


def build(model="m.onnx", calib=(), **request):
    return lambda: build_engine(model, BuildRequest(**request), calib=calib)


CHECK = ["check", "m.onnx", "--weights", "m.pt", "--source", "v.mp4"]
ROWS = {
    # export: the output is an input (directly, through a link, from a loaded model) and the option ranges
    "export out is the checkpoint": (export("m.pt"), ["onnx", "m.pt", "-o", "m.pt"]),
    "export out links to it": (export("link.pt"), ["onnx", "m.pt", "-o", "link.pt"]),
    "export out is a --plugin": (
        lambda: clo_export.export_onnx("m.pt", "p.py", plugins=["p.py"], check=False),
        ["onnx", "m.pt", "-o", "p.py", "--plugin", "p.py"],
    ),
    "export out is --source": (
        lambda: clo_export.export_onnx("m.pt", "v.mp4", source="v.mp4", check=False),
        ["onnx", "m.pt", "-o", "v.mp4", "--source", "v.mp4"],
    ),
    "export missing checkpoint": (export(model="none.pt"), ["onnx", "none.pt"]),
    "export --conf": (export(nms=True, conf=1.5), ["onnx", "m.pt", "--nms", "--conf", "1.5"]),
    "export --iou": (export(iou=-0.5), ["onnx", "m.pt", "--iou", "-0.5"]),
    "export --max-det": (export(nms=True, max_det=0), ["onnx", "m.pt", "--nms", "--max-det", "0"]),
    "export --batch": (export(batch=0), ["onnx", "m.pt", "--batch", "0"]),
    "export --opset": (export(opset=12), ["onnx", "m.pt", "--opset", "12"]),
    "export --imgsz": (export(imgsz=(100, 100)), ["onnx", "m.pt", "--imgsz", "100"]),
    # inference and the check: one rule for the thresholds and counts
    "infer --conf": (infer(conf=1.5), ["infer", "v.mp4", "-m", "m.onnx", "--conf", "1.5"]),
    "infer --iou": (infer(iou=2.0), ["infer", "v.mp4", "-m", "m.onnx", "--iou", "2.0"]),
    "infer --max-det": (infer(max_det=0), ["infer", "v.mp4", "-m", "m.onnx", "--max-det", "0"]),
    "infer --infer-batch": (infer(batch=0), ["infer", "v.mp4", "-m", "m.onnx", "--infer-batch", "0"]),
    "infer --check-every": (infer(check_every=0), ["infer", "v.mp4", "-m", "m.onnx", "--check-every", "0"]),
    "infer --min-f1": (infer(min_f1=2.0), ["infer", "v.mp4", "-m", "m.onnx", "--check", "m.pt", "--min-f1", "2"]),
    "infer --reconnect": (infer(reconnect=-1.0), ["infer", "v.mp4", "-m", "m.onnx", "--reconnect", "-1"]),
    "check --conf": (check(conf=-1.0), [*CHECK, "--conf", "-1"]),
    "check --min-f1": (check(min_f1=1.5), [*CHECK, "--min-f1", "1.5"]),
    "check --limit": (check(limit=0), [*CHECK, "--limit", "0"]),
    "check --json is the checkpoint": (check(json_out="m.pt"), [*CHECK, "--json", "m.pt"]),
    # engine build options, refused before TensorRT is needed
    "build --fp16 --int8": (build(precision="int8", keep_float_fp16=True), ["trt", "m.onnx", "--fp16", "--int8"]),
    "build --calib without --int8": (build(calib=["imgs"]), ["trt", "m.onnx", "--calib", "imgs"]),
    "build --calibrator": (build(calibrator="entropy"), ["trt", "m.onnx", "--calibrator", "entropy"]),
    "build --batch-range": (build(batch_range=(8, 4, 1)), ["trt", "m.onnx", "--batch-range", "8,4,1"]),
    "build --workspace": (build(workspace_gb=-1.0), ["trt", "m.onnx", "--workspace", "-1"]),
    "build --dla-core": (build(precision="fp16", dla_core=-1), ["trt", "m.onnx", "--fp16", "--dla-core", "-1"]),
    "build --no-gpu-fallback": (build(gpu_fallback=False), ["trt", "m.onnx", "--no-gpu-fallback"]),
    "build --timing-cache": (build(timing_cache="imgs"), ["trt", "m.onnx", "--timing-cache", "imgs"]),
    "build missing model": (build(model="none.onnx"), ["trt", "none.onnx"]),
    "build not an onnx": (build(model="m.pt"), ["trt", "m.pt"]),
}


def command_line(argv: list[str]) -> tuple[int, str]:
    """Exit code and output (whitespace normalised) of clo-export ARGV, or clo-infer for ``infer ...``."""
    from clo_export.cli.infer import app as infer_app
    from clo_export.cli.main import app

    target, argv = (infer_app, argv[1:]) if argv[0] == "infer" else (app, argv)
    result = runner.invoke(target, argv)
    return result.exit_code, " ".join(result.output.split())


@pytest.mark.parametrize("name", list(ROWS))
def test_library_and_cli_refuse_alike(name, ws, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # a build guard must not need TensorRT to refuse
    os.symlink(ws / "m.pt", ws / "link.pt")
    (ws / "p.py").write_text("")
    call, argv = ROWS[name]
    with pytest.raises(CloExportError) as refused:
        call()
    message = " ".join(str(refused.value).split())
    code, out = command_line(argv)
    assert code == 1 and out.count("error:") == 1, out
    assert out[out.index("error:") :] == f"error: {message}"
    assert sorted(p.name for p in Path(ws).iterdir()) == ["imgs", "link.pt", "m.onnx", "m.pt", "p.py", "v.mp4"]


def test_a_loaded_model_is_guarded_like_its_path(ws):
    """``export_onnx(load(p), out=p)`` refuses as ``export_onnx(p, out=p)`` and ``clo-export onnx p -o p`` do."""
    loaded = clo_export.load("m.pt")
    with pytest.raises(CloExportError) as refused:
        clo_export.export_onnx(loaded, "m.pt", check=False)
    code, out = command_line(["onnx", "m.pt", "-o", "m.pt"])
    assert code == 1 and out == "error: " + " ".join(str(refused.value).split())
    assert "is the input WEIGHTS 'm.pt'" in out
