"""Every ```python snippet in README.md and docs/*.md runs as written, in a fresh interpreter, in a temporary folder.

The README is the front door (at most 400 lines) and every relative link in it and in docs/ resolves.

The folder holds what the snippets name, as a user's would: ``best.pt`` (the bundled demo model) and
``calib_images/`` and ``frame.jpg`` (demo scenes). A snippet that cannot run here is marked with
``<!-- no-run: why -->`` on the line just before its fence; today those talk to a Triton server or need TensorRT and an
NVIDIA GPU (``scripts/gpu-check`` and the Triton tests cover those calls). The marker must give a
reason, so a snippet is never skipped silently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
NO_RUN = re.compile(r"<!-- no-run: (\S.*?) -->\s*$")
LINK = re.compile(r"\]\(([^)#:\s]+)(#[^)]*)?\)")


def snippets() -> list[tuple[str, str, str | None]]:
    """(page:line, code, reason to skip or None) for each ```python block of the README and docs/."""
    out = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        for m in FENCE.finditer(text):
            line = text.count("\n", 0, m.start()) + 1
            before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1]
            skip = NO_RUN.match(before)
            out.append((f"{page.relative_to(ROOT)}:{line}", m.group(1), skip.group(1) if skip else None))
    return out


def test_the_readme_is_a_front_door_whose_links_resolve():
    assert len(README.read_text(encoding="utf-8").splitlines()) <= 400
    broken = [
        f"{page.relative_to(ROOT)}: {target}"
        for page in PAGES
        for target, _ in LINK.findall(page.read_text(encoding="utf-8"))
        if not (page.parent / target).exists()
    ]
    assert not broken


def test_the_readme_has_runnable_snippets_and_says_why_others_do_not_run():
    found = snippets()
    assert len([s for s in found if s[2] is None]) >= 2  # the Python API and the plugin example
    assert all(reason for *_, reason in found if reason is not None)
    assert any("clo_export.load(" in code for _, code, reason in found if reason is None)
    assert any(where.startswith("README.md") for where, _, reason in found if reason is None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    from clo_export.demo.run import BUNDLED_MODEL, write_calibration_set

    d = tmp_path_factory.mktemp("readme")
    shutil.copy(BUNDLED_MODEL, d / "best.pt")
    write_calibration_set(d / "calib_images", 32)
    shutil.copy(d / "calib_images" / "calib_0000.jpg", d / "frame.jpg")
    return d


@pytest.mark.parametrize("where,code,skip", [pytest.param(*s, id=s[0]) for s in snippets()])
def test_readme_snippet_runs(where, code, skip, workdir, tmp_path):
    if skip:
        pytest.skip(f"{where}: {skip}")
    for item in workdir.iterdir():  # each snippet sees a fresh copy: none depends on another's files
        (shutil.copytree if item.is_dir() else shutil.copy)(item, tmp_path / item.name)
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{where}:\n{code}\n{out.stdout}\n{out.stderr}"
