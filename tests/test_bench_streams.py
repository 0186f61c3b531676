"""Smoke test of bench/streams.py --quick on files: real clo-infer processes, the tables it prints, no leftovers."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def leftovers() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("clo-bench-streams-*")}


@pytest.mark.slow
def test_quick_bench_on_files_measures_both_setups_and_cleans_up():
    before = leftovers()
    out = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "streams.py"), "--quick", "--sources", "files"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in out.stdout.splitlines() if line.startswith("|")]
    results = [r for r in rows if len(r) == 9 and r[0] == "files"]
    assert [(r[1], r[2]) for r in results] == [
        ("1", "1 process"),
        ("1", "1 process (separate)"),
        ("2", "1 process"),
        ("2", "2 processes"),
    ]
    for r in results:
        fps, rss, per_cpu = float(r[3]), float(r[6]), float(r[8])
        p50, p95 = (float(v) for v in r[5].split("/"))
        assert fps > 0 and rss > 50 and per_cpu > 0 and 0 < p50 <= p95, r
    ratios = {r[1]: [float(v) for v in r[2:]] for r in rows if len(r) == 6 and r[0] == "files"}
    assert sorted(ratios) == ["1", "2"] and ratios["1"][1] == 1.0  # N = 1: the baseline itself
    # the process tree's RSS is summed: two processes hold far more than one, one process with 2 streams does not
    assert ratios["2"][2] > 1.5 and ratios["2"][1] < ratios["2"][2], ratios
    assert leftovers() == before  # the temporary folder is removed
