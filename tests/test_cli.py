"""The CLI: help without heavy imports, one-line errors, --debug tracebacks, the info command."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from clo_export.cli.main import app

runner = CliRunner()


def test_help_lists_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    assert "info" in result.output and "Summarise a model" in result.output


@pytest.mark.parametrize("argv", [["clo-export", "--help"], ["clo-export", "info", "--help"]])
def test_help_imports_no_torch_onnxruntime_or_tensorrt(argv):
    code = textwrap.dedent(f"""
        import sys
        sys.argv = {argv!r}
        from clo_export.cli.main import app
        try:
            app()
        except SystemExit:
            pass
        heavy = [m for m in ("torch", "onnxruntime", "tensorrt", "onnx", "cv2") if m in sys.modules]
        print("HEAVY", heavy)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout


def test_info_on_the_seed_config_reports_the_parameter_count():
    result = runner.invoke(app, ["info", "--cfg", "yolov5n-cloformer.yaml", "--no-layers"])
    assert result.exit_code == 0, result.output
    assert "2,186,525 parameters" in result.output and "multiples of 128" in result.output


def test_errors_are_one_line_and_exit_1(tmp_path):
    result = runner.invoke(app, ["info", str(tmp_path / "missing.pt")])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: checkpoint") and "does not exist" in lines[0]
    result = runner.invoke(app, ["info", "--cfg", "yolov5n-cloformer.yaml", "--imgsz", "480,640"])
    assert result.exit_code == 1 and "layer 9 EfficientAttention" in result.output


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["--debug", "info", str(tmp_path / "missing.pt")])
    assert result.exit_code == 1
    assert type(result.exception).__name__ == "CloExportError"


def test_plugin_option_reaches_the_model(tmp_path):
    plugin = tmp_path / "identity_block.py"
    plugin.write_text(
        textwrap.dedent("""
        from torch import nn
        from clo_export.registry import register_block

        @register_block("IdentityBlock", kind="same", source="user")
        class IdentityBlock(nn.Module):
            def __init__(self, c1):
                super().__init__()
            def forward(self, x):
                return x
    """)
    )
    import yaml

    from clo_export.models.yolo import DEFAULT_CFG, load_cfg

    cfg = load_cfg(DEFAULT_CFG)
    cfg["backbone"][9] = [-1, 1, "IdentityBlock", []]
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(cfg))
    result = runner.invoke(app, ["info", "--cfg", str(tmp_path / "m.yaml"), "--no-layers"])
    assert result.exit_code == 1 and "unknown module 'IdentityBlock'" in result.output
    result = runner.invoke(app, ["info", "--cfg", str(tmp_path / "m.yaml"), "--plugin", str(plugin), "--no-layers"])
    assert result.exit_code == 0, result.output
    assert "1,880,349 parameters" in result.output  # seed minus the attention's 306,176
