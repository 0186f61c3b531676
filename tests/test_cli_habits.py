"""YOLOv5 habits on clo-export: --weights, --img/--img-size, --imgsz H W, and hints that name the real equivalent."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from clo_export.cli.habits import rewrite
from clo_export.cli.main import app

runner = CliRunner()
WIDE = {"COLUMNS": "200", "TERMINAL_WIDTH": "200"}


def run(*argv):
    """Invoke clo-export in-process; the output with the error panel's frame and line breaks removed."""
    result = runner.invoke(app, [str(a) for a in argv], env=WIDE)
    text = " ".join(result.output.translate({ord(c): " " for c in "│╭╮╰╯─"}).split())
    return result, text


def input_shape(path):
    import onnx

    dims = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value for d in dims]


def test_onnx_with_weights_and_img(small_ckpt, tmp_path):
    """YOLOv5's export.py line: --weights for the positional, --img H W at another size than the training one (256)."""
    out = tmp_path / "best.onnx"
    result, text = run("onnx", "--weights", small_ckpt, "--img", "384", "256", "--no-check", "-o", out)
    assert result.exit_code == 0, text
    assert input_shape(out) == [1, 3, 384, 256]
    assert small_ckpt.exists()


@pytest.mark.parametrize(
    "size, expect",
    [
        (["--imgsz", "384", "256"], "384x256"),
        (["--img-size", "384"], "384x384"),
        (["--img", "384,256"], "384x256"),
        (["--imgsz", "256x384"], "256x384"),
    ],
)
def test_info_imgsz_spellings(small_ckpt, size, expect):
    result, text = run("info", "--weights", small_ckpt, *size, "--no-layers")
    assert result.exit_code == 0, text
    assert f"GFLOPs at {expect}," in text


@pytest.mark.parametrize(
    "argv",
    [
        ["onnx", "x.pt", "--weights", "{ckpt}"],
        ["onnx", "--weights", "{ckpt}", "x.pt"],
        ["info", "--weights", "{ckpt}", "x.pt"],
    ],
)
def test_positional_and_weights_is_one_error(small_ckpt, tmp_path, argv):
    before = sorted(tmp_path.iterdir())
    result, text = run(*[a.format(ckpt=small_ckpt) for a in argv])
    assert result.exit_code == 2
    assert f"WEIGHTS given twice: as the argument and as --weights {small_ckpt}; give it once" in text
    assert "Traceback" not in result.output and sorted(tmp_path.iterdir()) == before


def test_weights_twice_and_without_value():
    assert "--weights given twice; give it once" in run("onnx", "--weights", "a.pt", "--weights=b.pt")[1]
    assert "--weights needs a value" in run("onnx", "--weights")[1]


@pytest.mark.parametrize(
    "argv, hint",
    [
        (
            ["onnx", "best.pt", "--include", "onnx"],
            "No such option: --include; clo-export onnx always writes ONNX; drop --include",
        ),
        (["onnx", "best.pt", "--device", "0"], "No such option: --device; export runs on the CPU"),
        (["onnx", "best.pt", "--dynamic"], "No such option: --dynamic; did you mean --dynamic-batch?"),
        (
            ["onnx", "best.pt", "--simplify"],
            "No such option: --simplify; the ONNX is simplified by default (--simplifier",
        ),
        (
            ["onnx", "best.pt", "--int8"],
            "No such option: --int8; INT8 is its own step after export: clo-export quantize",
        ),
        (["onnx", "best.pt", "--conf-thres", "0.3"], "No such option: --conf-thres; did you mean --conf?"),
        (["onnx", "best.pt", "--batch-size", "2"], "No such option: --batch-size; did you mean --batch?"),
        (
            ["check", "m.onnx", "--weights", "best.pt", "--source", "v.mp4", "--iou-thres", "0.5"],
            "No such option: --iou-thres; did you mean --iou?",
        ),
        (
            ["check", "m.onnx", "--weights", "best.pt", "--source", "v.mp4", "--check-f1", "0.9"],
            "No such option: --check-f1; did you mean --min-f1?",
        ),
        (["trt", "best.onnx", "--half"], "No such option: --half; did you mean --fp16?"),
    ],
)
def test_yolov5_spellings_get_a_hint(argv, hint):
    result, text = run(*argv)
    assert result.exit_code == 2 and hint in text, text


@pytest.mark.parametrize("argv", [["info", "best.pt", "--dynamic"], ["onnx", "best.pt", "--bogus"]])
def test_no_hint_where_the_command_lacks_the_equivalent(argv):
    """info has no --dynamic-batch: Click's own message, not a hint naming an option info does not have."""
    result, text = run(*argv)
    assert result.exit_code == 2 and f"No such option: {argv[-1]}" in text
    assert "did you mean --dynamic-batch" not in text


def test_half_is_an_onnx_option(tmp_path):
    """--half exists on onnx: no hint; the run gets as far as the missing checkpoint."""
    result, text = run("onnx", tmp_path / "missing.pt", "--half")
    assert result.exit_code == 1 and "No such option" not in text and "missing.pt" in text


@pytest.mark.parametrize("command", ["onnx", "info", "check"])
def test_help_lists_the_imgsz_spellings(command):
    result, text = run(command, "--help")
    assert result.exit_code == 0 and "--imgsz" in text and "--img " in text.replace(",", " ") and "--img-size" in text


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--imgsz", "640", "480", "x.pt"], ["--imgsz", "640,480", "x.pt"]),
        (["--imgsz", "640", "0"], ["--imgsz", "640", "0"]),  # a webcam index, not a width
        (["--imgsz", "640", "-o", "480"], ["--imgsz", "640", "-o", "480"]),
        (["-o", "--weights", "x.pt"], ["-o", "--weights", "x.pt"]),  # the value of -o, not the option
        (["--", "--weights", "x"], ["--", "--weights", "x"]),
        (["--conf", "0.3", "--weights=a.pt"], ["a.pt", "--conf", "0.3"]),
    ],
)
def test_rewrite(args, expect):
    assert rewrite(args, "--weights", ("--imgsz",), ("-o", "--conf", "--imgsz"))[0] == expect
