"""The runtime path needs no PyTorch: clo-infer on an ONNX model where importing torch raises."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

from tests.helpers import read_video

BLOCKER = textwrap.dedent("""
    import importlib.abc, sys

    class NoTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith(("torch.", "torchvision")):
                raise ImportError(f"import of {name} blocked: this is a runtime-only install")
            return None

    sys.meta_path.insert(0, NoTorch())
    sys.argv = ["clo-infer", *sys.argv[1:]]
    from clo_export.cli.infer import app
    try:
        app()
    finally:
        heavy = ("torch", "clo_export.export.exporter", "clo_export.models.checkpoint")
        loaded = [m for m in heavy if m in sys.modules]
        print("LOADED", loaded, file=sys.stderr)
""")


def test_clo_infer_on_onnx_runs_where_torch_cannot_be_imported(art, tmp_path):
    cmd = [
        sys.executable,
        "-c",
        BLOCKER,
        str(art.video),
        "--model",
        str(art.nms_onnx),
        "--save",
        str(tmp_path / "o.mp4"),
        "--json",
        str(tmp_path / "d.jsonl"),
        "--limit",
        "6",
        "--quiet",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr + out.stdout
    assert "LOADED []" in out.stderr
    assert read_video(tmp_path / "o.mp4")[0] == 6
    assert len([json.loads(line) for line in (tmp_path / "d.jsonl").read_text().splitlines()]) == 6


def test_a_pt_model_without_torch_says_how_to_install_it(art, tmp_path):
    cmd = [sys.executable, "-c", BLOCKER, str(art.video), "--model", str(art.pt), "--limit", "1"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "error:" in out.stderr and "torch" in out.stderr and "Traceback" not in out.stderr


MISSING = BLOCKER.replace(
    'raise ImportError(f"import of {name} blocked: this is a runtime-only install")',
    'raise ModuleNotFoundError(f"No module named {name!r}", name=name)  # as pip leaves it',
)
EXPORT = MISSING.replace('sys.argv = ["clo-infer", *sys.argv[1:]]', 'sys.argv = ["clo-export", *sys.argv[1:]]').replace(
    "from clo_export.cli.infer import app", "from clo_export.cli.main import app"
)


@pytest.mark.parametrize(
    "args",
    [
        ["onnx", "{pt}", "--imgsz", "128", "-o", "x.onnx"],
        ["info", "{pt}"],
        ["demo", "--out", "d"],
        ["check", "{onnx}", "-w", "{pt}", "--source", "{video}", "--json", "r.json"],
    ],
    ids=["onnx", "info", "demo", "check"],
)
def test_export_commands_without_torch_answer_in_one_line(art, tmp_path, args):
    """The torch-less runtime install: every export command says what to install, as check does, and writes nothing."""
    args = [a.format(pt=art.pt, onnx=art.onnx, video=art.video, images=art.images) for a in args]
    out = subprocess.run(
        [sys.executable, "-c", EXPORT, *args], capture_output=True, text=True, timeout=120, cwd=tmp_path
    )
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert out.returncode == 1, out.stderr
    assert "Traceback" not in out.stderr and len(errors) == 1, out.stderr
    assert "torch is needed for this step" in errors[0] and "pip install torch" in errors[0]
    assert list(tmp_path.iterdir()) == []
