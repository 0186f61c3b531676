"""Help and global flags the same on both apps: clean usage lines, no ``<bool>`` after plain flags,
--debug/-v before or after the command, --version on both, one name per batch meaning."""

from __future__ import annotations

import logging

import pytest
from typer.testing import CliRunner

from clo_export import __version__
from clo_export.cli.infer import app as infer_app
from clo_export.cli.main import app

runner = CliRunner()
COMMANDS = ["trt", "onnx", "quantize", "check", "info", "demo", "triton"]


def help_text(target, argv):
    result = runner.invoke(target, argv, env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.parametrize(
    "target, argv", [(app, ["--help"]), (infer_app, ["--help"])] + [(app, [c, "--help"]) for c in COMMANDS]
)
def test_help_is_clean(target, argv):
    text = help_text(target, argv)
    usage = next(line for line in text.splitlines() if "Usage:" in line)
    assert "{" not in usage and "}" not in usage, usage
    assert "<bool>" not in text
    for flag in ("--help", "--debug", "--verbose"):
        assert flag in text


@pytest.mark.parametrize(
    "argv, usage",
    [
        (["onnx", "--help"], "[OPTIONS] WEIGHTS"),
        (["trt", "--help"], "[OPTIONS] MODEL"),
        (["info", "--help"], "[OPTIONS] [WEIGHTS]"),
    ],
)
def test_usage_names_the_arguments(argv, usage):
    assert usage in help_text(app, argv)


def test_usage_of_clo_infer():
    assert "[OPTIONS] [SOURCE...]" in help_text(infer_app, ["--help"])  # optional: --source may give them


@pytest.mark.parametrize("target, argv", [(app, ["--version"]), (infer_app, ["--version"])])
def test_version_on_both_apps(target, argv):
    result = runner.invoke(target, argv)
    assert result.exit_code == 0 and result.output.strip().endswith(__version__)


@pytest.mark.parametrize(
    "argv, flags", [(["onnx", "--help"], ["--batch"]), (["trt", "--help"], ["--batch-range", "--batch"])]
)
def test_batch_names(argv, flags):
    text = help_text(app, argv)
    assert all(f in text for f in flags) and "--infer-batch" not in text and "--export-batch" not in text


def test_infer_batch_name():
    text = help_text(infer_app, ["--help"])
    assert "--infer-batch" in text and "--export-batch" not in text and "--batch-range" not in text
    assert "--batch " not in text.replace("--infer-batch ", "") and "--check-f1" not in text  # old names: hidden


@pytest.mark.parametrize(
    "target, argv, note, refusal",
    [
        (infer_app, ["v.mp4", "-m", "m.onnx", "--batch", "0"], "--batch is now --infer-batch", "--infer-batch 0 must"),
        (infer_app, ["v.mp4", "-m", "m.onnx", "--batch=0"], "--batch is now --infer-batch", "--infer-batch 0 must"),
        (infer_app, ["v.mp4", "-m", "m.onnx", "--check-f1", "2"], "--check-f1 is now --min-f1", "--min-f1 2.0 must"),
        (app, ["onnx", "m.pt", "--export-batch", "0"], "--export-batch is now --batch", "--batch 0 must be at least"),
    ],
)
def test_old_names_still_work_for_one_release(target, argv, note, refusal):
    """The 0.1 spellings reach the renamed option (its own check answers) after a one-line note."""
    result = runner.invoke(target, argv)
    text = " ".join(result.output.split())
    assert result.exit_code == 1 and f"note: {note} (the old name goes in the next release)" in text and refusal in text


def test_an_old_name_as_a_value_is_left_alone(tmp_path, monkeypatch):
    """`--source --batch` names a file called --batch; only option positions are renamed."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "m.onnx").write_bytes(b"")
    result = runner.invoke(infer_app, ["--source", "--batch", "-m", "m.onnx"])
    assert "is now" not in result.output and "'--batch' does not exist" in result.output


@pytest.mark.parametrize("argv", [["--debug", "info", "{missing}"], ["info", "{missing}", "--debug"]])
def test_debug_before_or_after_the_command(argv, tmp_path):
    result = runner.invoke(app, [a.format(missing=tmp_path / "missing.pt") for a in argv])
    assert result.exit_code == 1 and type(result.exception).__name__ == "CloExportError"


@pytest.mark.parametrize(
    "argv", [["--debug", "{missing}", "-m", "{missing}"], ["{missing}", "-m", "{missing}", "--debug"]]
)
def test_debug_anywhere_on_clo_infer(argv, tmp_path):
    result = runner.invoke(infer_app, [a.format(missing=tmp_path / "missing.mp4") for a in argv])
    assert result.exit_code == 1 and type(result.exception).__name__ == "CloExportError"


@pytest.mark.parametrize(
    "argv",
    [
        ["-v", "trt", "{model}", "--dry-run", "--target", "10.3"],
        ["trt", "{model}", "--dry-run", "--target", "10.3", "-v"],
    ],
)
def test_verbose_before_or_after_trt(argv, tmp_path):
    """trt has no -v of its own: the global flag sets DEBUG logging (and TensorRT's verbose log) in either position."""
    from tests.test_trt_cli import tiny_onnx

    model = tiny_onnx(tmp_path / "m.onnx")
    runner.invoke(app, ["info", str(tmp_path / "missing.pt")])  # a run without -v resets the level first
    assert logging.getLogger("clo_export").level == logging.INFO
    result = runner.invoke(app, [a.format(model=model) for a in argv])
    assert result.exit_code == 0, result.output
    assert logging.getLogger("clo_export").level == logging.DEBUG
    from clo_export.cli.common import is_verbose, setup

    assert is_verbose()
    setup()  # back to the default level for the tests that follow
    assert not is_verbose() and logging.getLogger("clo_export").level == logging.INFO


def _command(name: str):
    """The click command behind ``clo-export NAME`` or ``clo-infer``."""
    import typer.main

    if name == "clo-infer":
        return typer.main.get_command(infer_app)
    return typer.main.get_command(app).commands[name]


@pytest.mark.parametrize("name", [*COMMANDS, "clo-infer"])
def test_help_ends_with_examples_whose_options_exist(name):
    from clo_export.cli.examples import EXAMPLES

    target, argv = (infer_app, ["--help"]) if name == "clo-infer" else (app, [name, "--help"])
    text = help_text(target, argv)
    assert 2 <= len(EXAMPLES[name]) <= 4
    tail = text[text.index("Examples:") :]
    known = {opt for p in _command(name).params for opt in (*p.opts, *p.secondary_opts)}
    prefix = ["clo-infer"] if name == "clo-infer" else ["clo-export", name]
    for line, what in EXAMPLES[name]:
        assert line in tail and what in tail and "[" not in line + what
        words = line.split()
        assert words[: len(prefix)] == prefix
        assert {w for w in words if w.startswith("-")} <= known, line
