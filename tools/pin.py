"""Write constraints.txt and constraints-triton.txt: the exact versions `make install` and `make triton-env` install.

Builds both environments afresh under a temporary folder with the Makefile's own recipes, unconstrained
(so pip resolves the newest releases that fit pyproject.toml and clo_export/triton/serverenv.py), then
writes each one's `pip freeze --all`, less clo-export itself. Local version labels are dropped (torch's
`+cpu`): `torch==2.13.0` matches the CPU wheel our machines install and PyPI's build alike, and the
Makefile's TORCH already says which. Run: make pin   (or: python tools/pin.py [--python python3.11])
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SELF = "clo-export"
FILES = {"venv": "constraints.txt", "venv-triton": "constraints-triton.txt"}


def freeze(python: Path) -> list[str]:
    """`name==version` of every distribution in ``python``'s environment but clo-export, local labels dropped."""
    out = subprocess.run(
        [str(python), "-m", "pip", "freeze", "--all", "--exclude-editable"], check=True, capture_output=True, text=True
    ).stdout
    pins = []
    for line in out.splitlines():
        m = re.fullmatch(r"([A-Za-z0-9._-]+)==([^+\s]+)(\+\S+)?", line.strip())
        if m is None:
            continue  # comments, editable and direct-URL lines
        if re.sub(r"[-_.]+", "-", m.group(1)).lower() != SELF:
            pins.append(f"{m.group(1)}=={m.group(2)}")
    return sorted(pins, key=str.lower)


def header(target: str, python: Path) -> str:
    """What the file is and how it was made."""
    version = subprocess.run(
        [str(python), "-c", "import platform; print(platform.python_version())"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    what = (
        "make install (.venv: torch CPU + .[export,dev])"
        if target == "venv"
        else "make triton-env (.venv-triton: the Triton test server, clo_export/triton/serverenv.py)"
    )
    return (
        f"# Exact versions that {what} installs; the Makefile passes this file to pip with -c.\n"
        f"# Made by `make pin` (tools/pin.py) on {datetime.date.today()} with CPython {version} on "
        f"{platform.system()} {platform.machine()}:\n"
        "# a fresh environment under /tmp from the Makefile's recipe without constraints, then pip freeze --all\n"
        "# less clo-export (local version labels such as torch's +cpu dropped).\n"
        "# Do not edit by hand: rerun make pin.\n"
    )


def write(path: Path, text: str) -> None:
    """Replace ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--python", default="python3", help="interpreter the environments are made with (make's PYTHON)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="clo-pin-") as tmp:
        venvs = {k: Path(tmp) / k for k in FILES}
        subprocess.run(
            [
                "make",
                "-C",
                str(ROOT),
                f"PYTHON={args.python}",
                f"VENV={venvs['venv']}",
                f"TRITON_VENV={venvs['venv-triton']}",
                "CONSTRAINTS=",
                "TRITON_CONSTRAINTS=",
                "install",
                "triton-env",
            ],
            check=True,
        )
        for key, name in FILES.items():
            python = venvs[key] / "bin" / "python"
            write(ROOT / name, header(key, python) + "\n".join(freeze(python)) + "\n")
            print(f"wrote {name}", file=sys.stderr)


if __name__ == "__main__":
    main()
