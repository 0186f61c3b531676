"""Extract the Python API names each TensorRT release exposes, for tests/test_trt_api.py.

Downloads the TensorRT Python *bindings* wheels (no libraries, ~1 MB each) with
`pip download --no-deps` into a temporary directory, opens the pybind11 extension
`tensorrt_bindings/tensorrt.so` and lists the identifier strings in its `.rodata`
section: every NUL-terminated string plus every string the code points into with a
RIP-relative `lea` or a relative relocation (the linker tail-merges "precision" into
"reset_precision", "Logger" into "ILogger", so whole-string scanning alone misses
them). Names defined at module level in the wheel's `__init__.py` (`__version__`,
...) are added. Output: `tests/data/tensorrt_api/<version>.txt`, sorted, one name a line.

No TensorRT 8.5 bindings wheel exists on PyPI; 8.6.1 (`tensorrt-bindings`) stands in
for the 8.x row. Run: python tools/trt_api_names.py [--out DIR]
"""

from __future__ import annotations

import argparse
import ast
import re
import struct
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

# (version written to the list, pip requirement)
WHEELS: tuple[tuple[str, str], ...] = (
    ("8.6.1", "tensorrt-bindings==8.6.1"),
    ("10.3.0", "tensorrt-cu12-bindings==10.3.0"),
    ("10.12.0.36", "tensorrt-cu12-bindings==10.12.0.36"),
    ("11.4.0.106", "tensorrt-cu12-bindings==11.4.0.106"),
)
PYTHONS = ("3.11", "3.10", "3.12", "3.9", "3.8")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_28_x86_64", "manylinux_2_34_x86_64")
NAME_RE = re.compile(rb"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
COMMAND = "python tools/trt_api_names.py"
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "tensorrt_api"


def download(requirement: str, dest: Path) -> Path:
    """pip-download one bindings wheel (no deps), trying CPython versions newest-supported first."""
    for py in PYTHONS:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--quiet",
            "--implementation",
            "cp",
            "--python-version",
            py,
            "-d",
            str(dest),
        ]
        for plat in PLATFORMS:
            cmd += ["--platform", plat]
        before = set(dest.glob("*.whl"))
        if subprocess.run([*cmd, requirement], capture_output=True).returncode == 0:
            new = set(dest.glob("*.whl")) - before
            if new:
                return new.pop()
    raise SystemExit(f"no wheel found for {requirement}")


def _sections(elf: bytes) -> dict[str, tuple[int, int, int]]:
    """Map ELF64 section name -> (virtual address, file offset, size)."""
    if elf[:5] != b"\x7fELF\x02":
        raise ValueError("not an ELF64 file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)
    raw = [struct.unpack_from("<IIQQQQ", elf, shoff + i * shentsize) for i in range(shnum)]
    strtab_off = raw[shstrndx][4]
    out = {}
    for name_off, _type, _flags, addr, off, size in raw:
        end = elf.index(b"\0", strtab_off + name_off)
        out[elf[strtab_off + name_off : end].decode()] = (addr, off, size)
    return out


def _pointer_targets(elf: bytes, sec: dict[str, tuple[int, int, int]]) -> set[int]:
    """Virtual addresses referenced by `lea reg, [rip+disp32]` in .text and by R_X86_64_RELATIVE relocs."""
    targets: set[int] = set()
    addr, off, size = sec[".text"]
    text = elf[off : off + size]
    for m in re.finditer(rb"[\x48\x4c]\x8d[\x05\x0d\x15\x1d\x25\x2d\x35\x3d]", text):
        (disp,) = struct.unpack_from("<i", text, m.end())
        targets.add(addr + m.end() + 4 + disp)
    if ".rela.dyn" in sec:
        _, off, size = sec[".rela.dyn"]
        for i in range(off, off + size, 24):
            _r_off, info, addend = struct.unpack_from("<QQq", elf, i)
            if info & 0xFFFFFFFF == 8:  # R_X86_64_RELATIVE
                targets.add(addend)
    return targets


def so_names(elf: bytes) -> set[str]:
    """Identifier-like strings in the extension's .rodata (whole strings and pointed-to suffixes)."""
    sec = _sections(elf)
    addr, off, size = sec[".rodata"]
    rodata = elf[off : off + size]
    starts = {0} | {m.end() for m in re.finditer(rb"\0", rodata)}
    starts |= {t - addr for t in _pointer_targets(elf, sec) if addr <= t < addr + size}
    names = set()
    for s in starts:
        end = rodata.find(b"\0", s)
        if end < 0 or not 2 <= end - s <= 64:
            continue
        raw = rodata[s:end]
        if NAME_RE.fullmatch(raw) and not raw.startswith(b"_Z"):
            names.add(raw.decode())
    return names


def init_names(source: str) -> set[str]:
    """Module-level names defined in the wheel's __init__.py (functions, assignments)."""
    names = set()
    for node in ast.parse(source).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return {n for n in names if not n.startswith("_") or n.startswith("__")}


def wheel_names(wheel: Path) -> set[str]:
    """All API names found in one bindings wheel."""
    with zipfile.ZipFile(wheel) as z:
        so = [n for n in z.namelist() if n.endswith(".so") and "/tensorrt" in n]
        init = [n for n in z.namelist() if n.count("/") == 1 and n.endswith("/__init__.py")]
        if len(so) != 1:
            raise SystemExit(f"{wheel.name}: expected one tensorrt*.so, found {so}")
        names = so_names(z.read(so[0]))
        for n in init:
            names |= init_names(z.read(n).decode())
    return names


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for version, req in WHEELS:
            wheel = download(req, Path(tmp))
            names = sorted(wheel_names(wheel))
            header = f"# made by: {COMMAND}  (pip download --no-deps {req}: {wheel.name})"
            path = args.out / f"{version}.txt"
            path.write_text("\n".join([header, *names]) + "\n")
            print(f"{path}: {len(names)} names, {path.stat().st_size} bytes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
