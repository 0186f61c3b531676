"""A regular (non-editable) install carries every subpackage of clo_export/ (no folder is mapped in from outside)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.install
def test_wheel_install_has_the_subpackages_and_config(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        check=True, capture_output=True, text=True, cwd=tmp_path,
    )
    assert (target / "clo_export" / "blocks" / "cloformer.py").is_file()
    assert (target / "clo_export" / "quantization" / "calibset.py").is_file()
    assert (target / "clo_export" / "cfg" / "yolov5n-cloformer.yaml").is_file()
    assert len(list((target / "clo_export" / "assets" / "frames").glob("sample_*.jpg"))) == 6  # parity's sample frames
    code = (
        "import clo_export.blocks.cloformer, clo_export.quantization, clo_export.models.yolo as y; "
        "print(y.__file__); print(y.DEFAULT_CFG.is_file())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"})
    file, cfg_ok = out.stdout.split()
    assert file.startswith(str(target)) and cfg_ok == "True"


def test_atomic_writes_get_the_usual_permissions(tmp_path):
    import os

    from clo_export.fileio import write_text_atomic

    write_text_atomic(tmp_path / "report.json", "{}")
    umask = os.umask(0)
    os.umask(umask)
    assert (tmp_path / "report.json").stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]
