"""The fault suite's harness: run a command in a folder of real inputs and prove it refused cleanly.

A refusal means: the exit code (1 for errors, 130 for an interrupt), exactly one ``error:`` line, no
traceback, and the folder exactly as before (every input byte-identical, nothing left behind).
``FAULTS`` counts the cases by kind; the ``tally`` fixture (conftest.py) prints it with ``-s``.
"""

from __future__ import annotations

import collections
import hashlib
import os
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from typer.testing import CliRunner

from clo_export.cli.infer import app as infer_app
from clo_export.cli.main import app as export_app

runner = CliRunner()
FAULTS: collections.Counter = collections.Counter()
FAST = settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
BIN = Path(sys.executable).parent


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root``: file hash, link target, 'dir', or the kind and numbers of a special file (unread)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "-> " + os.readlink(p)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            elif stat.S_ISREG(st.st_mode):
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[rel] = f"special {stat.S_IFMT(st.st_mode):o} {os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    return out


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("error:")]


def assert_refused(
    result, before: dict[str, str], root: Path, match: str = "", code: int = 1, kind: str = "bad input"
) -> None:
    """Exit ``code``, one error line (containing ``match``), no traceback, the folder exactly as before."""
    out = result.output
    assert result.exit_code == code, out
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in out
    errors = error_lines(out)
    assert len(errors) == 1, out
    assert match in errors[0], errors[0]
    after = snapshot(root)
    assert after == before, f"changed: {sorted(set(after.items()) ^ set(before.items()))}"
    FAULTS[kind] += 1


def export(*args: str):
    return runner.invoke(export_app, [str(a) for a in args])


def infer(*args: str):
    return runner.invoke(infer_app, [str(a) for a in args])


def cli_path(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in this environment (pip install -e .)")
    return path


def _as_foreground() -> None:
    """SIGINT and SIGHUP handled as in a terminal's foreground job: a suite started in the background (``make
    test &``, some CI runners) inherits SIGINT ignored, and one started under ``nohup`` SIGHUP ignored, which
    clo-infer then rightly keeps ignoring."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def start(args: list[str], cwd: Path) -> tuple[subprocess.Popen, list[str]]:
    """Start a command as a foreground job would run; its output lines are collected by a thread."""
    proc = subprocess.Popen(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "200"},
        preexec_fn=_as_foreground,
    )
    lines: list[str] = []
    proc.reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    proc.reader.start()
    return proc, lines


def finish(proc: subprocess.Popen, lines: list[str]) -> tuple[int, str]:
    """Exit code and the whole output: waits for the process and for its reader to reach end of file (no sleep)."""
    code = proc.wait(60)
    proc.reader.join(30)
    assert not proc.reader.is_alive(), "the command's output never closed"
    return code, "".join(lines)


LONG = (
    1500  # frames of the video a signal test interrupts: at ~250 FPS here, seconds of work left after the first records
)


def records_flowing(root: Path):
    """A condition: a JSON Lines output (still its .part file) holds its first records: frames are flowing."""
    return lambda: any(
        ".part" in p.name and p.name.endswith(".jsonl") and p.stat().st_size > 2_000 for p in root.iterdir()
    )


def wait_for(cond, timeout: float = 120.0) -> None:
    t0 = time.monotonic()
    while not cond():
        assert time.monotonic() - t0 < timeout, "timed out waiting for the command to start working"
        time.sleep(0.02)
