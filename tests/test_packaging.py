"""A regular (non-editable) install carries every subpackage of clo_export/ (no folder is mapped in from outside)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.install
def test_wheel_install_has_the_subpackages_and_config(tmp_path):
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert (target / "clo_export" / "blocks" / "cloformer.py").is_file()
    assert (target / "clo_export" / "quantization" / "calibset.py").is_file()
    assert (target / "clo_export" / "cfg" / "yolov5n-cloformer.yaml").is_file()
    assert len(list((target / "clo_export" / "assets" / "frames").glob("sample_*.jpg"))) == 6  # parity's sample frames
    code = (
        "import clo_export.blocks.cloformer, clo_export.quantization, clo_export.models.yolo as y; "
        "print(y.__file__); print(y.DEFAULT_CFG.is_file())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
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


def _pins(name: str) -> dict[str, str]:
    """``{normalized name: version}`` of a constraints file; every line must be an exact ``name==version`` pin."""
    from packaging.utils import canonicalize_name

    pins = {}
    for line in (ROOT / name).read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            pkg, sep, version = line.partition("==")
            exact = sep and version and not any(c in version for c in "<>=!~*,; ")
            assert exact, f"{name}: {line!r} is not an exact pin"
            pins[canonicalize_name(pkg)] = version
    return pins


def test_make_installs_every_package_under_the_constraints(tmp_path):
    """Every pip install that make test would run (both environments, pip itself too) carries its constraints file."""
    venvs = [f"VENV={tmp_path / 'v'}", f"TRITON_VENV={tmp_path / 't'}"]
    out = subprocess.run(
        ["make", "-n", "-C", str(ROOT), *venvs, "test"], capture_output=True, text=True, check=True
    ).stdout
    installs = [line for line in out.splitlines() if "pip install" in line]
    assert len(installs) == 4, out
    for line in installs:
        expected = "constraints-triton.txt" if str(tmp_path / "t") in line else "constraints.txt"
        assert f"-c {expected}" in line, line
    assert any("torch==" in line and "-e .[export,dev]" in line.replace('"', "") for line in installs)


def test_the_pins_satisfy_what_the_project_requires():
    """constraints.txt fits pyproject's core, export and dev requirements; constraints-triton.txt fits the Triton
    server's (serverenv) with the same ONNX Runtime, so served detections match in-process ones."""
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    from clo_export.triton.serverenv import test_server_requirements

    try:
        import tomllib
    except ImportError:  # Python 3.10
        from pip._vendor import tomli as tomllib
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    main, triton = _pins("constraints.txt"), _pins("constraints-triton.txt")
    assert "clo-export" not in main and "clo-export" not in triton
    extras = project["optional-dependencies"]
    wanted = [(r, "") for r in project["dependencies"]] + [(r, e) for e in ("export", "dev") for r in extras[e]]
    for text, extra in wanted + [("torch==2.13.0", "")]:  # the Makefile's TORCH
        req = Requirement(text)
        if req.marker is None or req.marker.evaluate({"extra": extra}):
            name = canonicalize_name(req.name)
            assert name in main and req.specifier.contains(main[name], prereleases=True), (text, main.get(name))
    assert triton["onnxruntime"] == main["onnxruntime"]
    for text in test_server_requirements(main["onnxruntime"]):
        req = Requirement(text)
        assert req.specifier.contains(triton[canonicalize_name(req.name)], prereleases=True), (text, triton)


def _installed(python: str) -> dict[str, str]:
    """``{normalized name: public version}`` of every distribution in ``python``'s environment but clo-export."""
    code = (
        "import importlib.metadata as m, json; "
        "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
    )
    import json

    from packaging.utils import canonicalize_name
    from packaging.version import Version

    found = json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, check=True).stdout)
    return {canonicalize_name(k): Version(v).public for k, v in found.items() if canonicalize_name(k) != "clo-export"}


@pytest.mark.parametrize(
    "venv, constraints",
    [
        (Path(sys.prefix), "constraints.txt"),
        (Path(os.environ.get("CLO_TRITON_ENV", ROOT / ".venv-triton")), "constraints-triton.txt"),
    ],
)
def test_a_make_built_environment_holds_exactly_the_pinned_versions(venv, constraints):
    """make install / make triton-env copy the constraints file they used into the stamp; such an environment must hold
    exactly the pinned distributions (a missing pin, a drifted version or a stale install fails)."""
    stamp = venv / ".installed"
    if not stamp.is_file() or not stamp.read_text().strip():
        pytest.skip(f"{venv} was not made by make with {constraints} (no pinned stamp); make install / make triton-env")
    assert stamp.read_text() == (ROOT / constraints).read_text(), f"{venv}: another {constraints}; rerun make"
    pins = _pins(constraints)
    installed = _installed(str(venv / "bin" / "python"))
    drifted = {k: v for k, v in installed.items() if pins.get(k) != v}
    assert drifted == {}, "installed distributions not pinned at their installed version"
    assert set(pins) == set(installed), f"pinned but not installed: {sorted(set(pins) - set(installed))}"
