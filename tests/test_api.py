"""The package-top Python API: light to import, every advertised name resolves, documented calls work."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEAVY = ("torch", "onnxruntime", "tensorrt", "onnx", "cv2")


def test_import_clo_export_is_light_and_every_name_resolves():
    code = textwrap.dedent(f"""
        import sys
        import clo_export
        heavy = [m for m in {HEAVY!r} if m in sys.modules]
        print("HEAVY", heavy)
        missing = [n for n in clo_export.__all__ if getattr(clo_export, n, None) is None]
        print("MISSING", missing)
        from clo_export.models import load
        from clo_export.models.checkpoint import load as checkpoint_load
        print("SAME", load is checkpoint_load)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    assert "HEAVY []" in out and "MISSING []" in out and "SAME True" in out
    import clo_export

    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        clo_export.nope  # noqa: B018


def test_the_package_top_imports_on_python_38():
    """clo-infer imports the package top on JetPack 5's Python 3.8 (annotations stay unevaluated there)."""
    found = sorted(Path("/root/.pyenv/versions").glob("3.8.*/bin/python3.8"))
    if not found:
        pytest.skip("no Python 3.8 under /root/.pyenv/versions")
    code = "import clo_export, clo_export.models; print(clo_export.__version__, clo_export.load.__doc__ is not None)"
    out = subprocess.run([str(found[-1]), "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0 and out.stdout.split()[1] == "True", out.stderr


def test_export_onnx_takes_a_path_and_load_runner_runs_the_result(tmp_path):
    import numpy as np

    import clo_export
    from clo_export.demo.run import BUNDLED_MODEL

    result = clo_export.export_onnx(
        BUNDLED_MODEL, tmp_path / "m.onnx", clo_export.ExportOptions(imgsz=(256, 256)), check=False
    )
    assert result.path.is_file() and result.parity is None
    runner, info = clo_export.load_runner(result.path)
    assert info.imgsz == (256, 256) and info.backend == "onnxruntime"
    with runner:
        out = runner.infer({"images": np.zeros((1, 3, 256, 256), np.float32)})
    assert out["output0"].shape[0] == 1
    with pytest.raises(clo_export.CloExportError, match="does not exist"):
        clo_export.load(tmp_path / "missing.pt")
