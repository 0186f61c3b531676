"""The Jetson runtime install on CPython 3.8, 3.10 and 3.12: the README's pip command, clo-infer, clo-export trt.

For each interpreter under /root/.pyenv/versions (CI's .ci/run requires all three and sets
CLO_EXPORT_REQUIRE_PYTHONS=1, so nothing skips there): a fresh venv, a copy of this repository, the
README's Jetson `pip install` line run verbatim, which must bring neither torch nor a PyPI OpenCV or
onnxruntime; then the CPU onnxruntime for the test and opencv-python-headless standing in for
JetPack's OpenCV. clo-infer runs on a video and on a folder of images with FP32 and INT8 ONNX made by
this (main) environment, and its JSON Lines must equal the main environment's. Both sides run ONNX
Runtime without its graph rewrites (tests/data/ort_unoptimized: they differ between onnxruntime
releases, and 3.8's newest is older than ours). The dry run must pass
and `clo-export trt` without TensorRT must end in its one-line install hint.
"""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.trt_exports import exports

ROOT = Path(__file__).resolve().parent.parent
PYENV = Path(os.environ.get("PYENV_ROOT", "/root/.pyenv")) / "versions"
PYTHONS = ("3.8", "3.10", "3.12")
TEST_EXTRAS = ("onnxruntime", "opencv-python-headless")  # CPU stand-ins for the Jetson wheels / JetPack's OpenCV
REQUIRED = os.environ.get("CLO_EXPORT_REQUIRE_PYTHONS", "") not in ("", "0")
COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__", "demo-out", ".pytest_cache")

pytestmark = [pytest.mark.install, pytest.mark.slow]


def interpreter(minor: str) -> Path | None:
    """The newest /root/.pyenv/versions/<minor>.N/bin/python<minor>, if any."""
    found = sorted(PYENV.glob(f"{minor}.*/bin/python{minor}"), key=lambda p: [int(x) for x in p.parts[-3].split(".")])
    return found[-1] if found else None


def readme_jetson_pip() -> str:
    """The `pip install` line of the README's Jetson block (marked jetson-install)."""
    text = (ROOT / "README.md").read_text()
    block = text.split("<!-- jetson-install", 1)[1].split("```", 2)[1]
    line = next(ln for ln in block.splitlines() if ln.strip().startswith("pip install"))
    return line.split("#", 1)[0].strip()


def run(cmd, cwd=None, timeout=600, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, shell=isinstance(cmd, str)
    )


def make_env(minor: str, root: Path) -> dict:
    """venv + the README install + the test extras; returns what was installed at each step."""
    python = interpreter(minor)
    venv = root / f"venv{minor}"
    assert run([str(python), "-m", "venv", str(venv)]).returncode == 0
    work = root / f"clone{minor}"
    shutil.copytree(ROOT, work / "clo-export", ignore=COPY_IGNORE)
    env = {**os.environ, "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}", "VIRTUAL_ENV": str(venv)}
    env.pop("PYTHONPATH", None)
    step = run(readme_jetson_pip(), cwd=work, env=env)
    assert step.returncode == 0, step.stdout[-2000:] + step.stderr[-2000:]
    runtime = run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"]).stdout
    extra = run([str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *TEST_EXTRAS], env=env)
    assert extra.returncode == 0, extra.stderr[-2000:]
    return {"minor": minor, "venv": venv, "env": env, "runtime": runtime}


@pytest.fixture(scope="module")
def envs(tmp_path_factory):
    missing = [m for m in PYTHONS if interpreter(m) is None]
    if missing:
        msg = f"CPython {', '.join(missing)} not under {PYENV} (pyenv install them)"
        if REQUIRED:
            pytest.fail(msg)
        pytest.skip(msg)
    root = tmp_path_factory.mktemp("pymatrix")
    exports()  # the ONNX files, made once by this environment before the installs start
    with concurrent.futures.ThreadPoolExecutor(len(PYTHONS)) as pool:
        made = list(pool.map(lambda m: make_env(m, root), PYTHONS))
    return {e["minor"]: e for e in made}


UNOPTIMIZED = Path(__file__).parent / "data" / "ort_unoptimized"


def clo_infer(bin_dir: Path, source: Path, model: Path, out: Path, env=None) -> str:
    env = {**(env or os.environ), "PYTHONPATH": str(UNOPTIMIZED)}
    result = run(
        [
            str(bin_dir / "clo-infer"),
            str(source),
            "--model",
            str(model),
            "--json",
            str(out),
            "--device",
            "cpu",
            "--workers",
            "1",
            "--quiet",
        ],
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return out.read_text()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The main environment's JSON Lines for each (source, model)."""
    out = tmp_path_factory.mktemp("reference")
    main_bin = Path(sys.executable).parent
    e = exports()
    return {
        (s, m): clo_infer(main_bin, getattr(e, s), getattr(e, m), out / f"{s}-{m}.jsonl")
        for s in ("video", "images")
        for m in ("fp32", "int8")
    }


@pytest.mark.parametrize("minor", PYTHONS)
def test_readme_install_pulls_no_torch_opencv_or_onnxruntime(envs, minor):
    installed = {line.split("==")[0].lower() for line in envs[minor]["runtime"].splitlines()}
    assert {"numpy", "onnx", "polygraphy", "typer", "clo-export"} <= installed
    assert not installed & {
        "torch",
        "onnxruntime",
        "onnxruntime-gpu",
        "opencv-python",
        "opencv-python-headless",
        "pycuda",
        "cuda-python",
    }
    if minor == "3.8":
        assert re.search(r"^numpy==1\.24\.", envs[minor]["runtime"], re.M)


@pytest.mark.parametrize("minor", PYTHONS)
def test_clo_infer_matches_the_main_environment(envs, reference, minor, tmp_path):
    e = exports()
    bin_dir = envs[minor]["venv"] / "bin"
    for source, model in reference:
        got = clo_infer(
            bin_dir, getattr(e, source), getattr(e, model), tmp_path / f"{source}-{model}.jsonl", env=envs[minor]["env"]
        )
        assert got == reference[source, model], f"Python {minor}: {source} with {model} differs"
        assert got.count("\n") == (24 if source == "video" else 3)


@pytest.mark.parametrize("minor", PYTHONS)
def test_dry_run_passes_and_a_build_without_tensorrt_is_one_line(envs, minor):
    bin_dir, env = envs[minor]["venv"] / "bin", envs[minor]["env"]
    fp32 = exports().fp32
    dry = run([str(bin_dir / "clo-export"), "trt", str(fp32), "--fp16", "--dry-run", "--target", "8.5"], env=env)
    assert dry.returncode == 0 and "pre-flight check for TensorRT 8.5.2: passed" in dry.stdout, dry.stdout + dry.stderr
    build = run([str(bin_dir / "clo-export"), "trt", str(fp32), "--fp16"], env=env)
    lines = [ln for ln in build.stderr.splitlines() if ln.strip()]
    assert build.returncode == 1 and "Traceback" not in build.stderr, build.stderr
    assert len(lines) == 1 and lines[0].startswith("error: tensorrt is needed") and "pip install tensorrt" in lines[0]


def test_export_on_python_3_8_is_one_line(envs):
    env = envs["3.8"]
    out = run([str(env["venv"] / "bin" / "clo-export"), "onnx", "best.pt", "--imgsz", "640"], env=env["env"])
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 1 and len(lines) == 1 and "needs Python >= 3.10" in lines[0], out.stderr


@pytest.mark.parametrize("minor", PYTHONS)
def test_global_options_before_the_command_and_their_help(envs, minor):
    """Typer reads Annotated options from evaluated annotations only below 3.10: --version and -v still work there."""
    bin_dir, env = envs[minor]["venv"] / "bin", envs[minor]["env"]
    version = run([str(bin_dir / "clo-export"), "--version"], env=env)
    assert version.returncode == 0 and version.stdout.strip().startswith("clo-export "), version.stdout + version.stderr
    verbose = run(
        [str(bin_dir / "clo-export"), "-v", "trt", str(exports().fp32), "--fp16", "--dry-run", "--target", "8.5"],
        env=env,
    )
    assert verbose.returncode == 0, verbose.stdout + verbose.stderr
    helptext = run([str(bin_dir / "clo-export"), "--help"], env={**env, "COLUMNS": "200"}).stdout
    assert "Show tracebacks" in helptext and "--no-debug" not in helptext
