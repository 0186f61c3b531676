"""Fault injection: bad inputs, clashing outputs, full and read-only filesystems, links, signals, crafted files.

Every case runs a real command (``clo-export``/``clo-infer`` through Typer's runner, or a real
subprocess for signals) in a folder holding real inputs, and asserts the guarantees the README's
troubleshooting section lists:

* the exit code (1 for errors, 130 for an interrupt);
* exactly one ``error:`` line and no traceback;
* every input byte-identical afterwards;
* nothing left behind: no output under the final name, no ``.part`` file, no folder it made.

``FAULTS`` counts the cases run (hypothesis examples included); ``-s`` prints the tally.
"""

from __future__ import annotations

import collections
import io
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import yaml
from hypothesis import example, given
from hypothesis import strategies as st

from clo_export.errors import CloExportError
from tests.faults_harness import (
    FAST,
    FAULTS,
    LONG,
    assert_refused,
    cli_path,
    error_lines,
    export,
    finish,
    infer,
    records_flowing,
    snapshot,
    start,
    wait_for,
)
from tests.helpers import artifacts, make_video

# ---------------------------------------------------------------------------------------------- harness

pytestmark = pytest.mark.usefixtures("tally")


def run_case(ws: Path, cli, args, match: str, setup=None, code: int = 1, kind: str = "bad input") -> None:
    if setup:
        setup(ws)
    before = snapshot(ws)
    assert_refused(cli(*args), before, ws, match, code, kind)


# ------------------------------------------------------------------------------ 1. outputs never replace inputs


def hard(name: str, target: str):
    return lambda ws: os.link(ws / target, ws / name)


def soft(name: str, target: str):
    return lambda ws: os.symlink(target, ws / name)


def foreign(name: str):
    return lambda ws: (ws / name).write_text('{"history": [1, 2, 3]}\n')


CLASHES = [
    (export, ["onnx", "m.pt", "-o", "m.pt", "--imgsz", "128"], "is the input WEIGHTS", None),
    (export, ["onnx", "m.pt", "-o", "hard.pt", "--imgsz", "128"], "through a link", hard("hard.pt", "m.pt")),
    (export, ["onnx", "m.pt", "-o", "soft.pt", "--imgsz", "128"], "through a link", soft("soft.pt", "m.pt")),
    (export, ["onnx", "m.pt", "-o", "imgs/img0.jpg", "--source", "imgs"], "inside the input --source", None),
    (
        export,
        ["onnx", "m.pt", "-o", "new.onnx", "--imgsz", "128"],
        "was not written by clo-export",
        foreign("new.onnx.json"),
    ),
    (export, ["quantize", "m.onnx", "--calib", "imgs", "-o", "m.onnx"], "is the input MODEL", None),
    (
        export,
        ["quantize", "m.onnx", "--calib", "imgs", "--cache", "m.onnx"],
        "--cache 'm.onnx' is the input MODEL",
        None,
    ),
    (export, ["quantize", "m.onnx", "--calib", "imgs", "--cache", "imgs/img1.png"], "inside the input --calib", None),
    (export, ["quantize", "m.onnx", "--calib", "imgs", "-o", "q.onnx", "--cache", "q.onnx"], "are the same file", None),
    (
        export,
        ["quantize", "m.onnx", "--calib", "imgs", "--cache", "c.json"],
        "was not written by clo-export",
        foreign("c.json"),
    ),
    (export, ["check", "m.onnx", "-w", "m.pt", "-s", "imgs", "--json", "m.onnx"], "is the input MODEL", None),
    (export, ["check", "m.onnx", "-w", "m.pt", "-s", "imgs", "--report", "m.pt"], "is the input --weights", None),
    (
        export,
        ["check", "m.onnx", "-w", "m.pt", "-s", "imgs", "--json", "r.json"],
        "through a link",
        soft("r.json", "m.pt"),
    ),
    (
        export,
        ["check", "m.onnx", "-w", "m.pt", "-s", "imgs"],
        "was not written by clo-export",
        foreign("m.onnx.check.json"),
    ),
    (infer, ["v.mp4", "-m", "m.onnx", "--save", "v.mp4"], "is the input SOURCE", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--save", "link.mp4"], "through a link", soft("link.mp4", "v.mp4")),
    (infer, ["v.mp4", "-m", "m.onnx", "--save", "hard.mp4"], "through a link", hard("hard.mp4", "v.mp4")),
    (infer, ["imgs", "-m", "m.onnx", "--save-dir", "imgs"], "inside the input SOURCE", None),
    (infer, ["imgs", "-m", "m.onnx", "--save-dir", "imgs/annotated"], "inside the input SOURCE", None),
    (infer, ["imgs/*.png", "-m", "m.onnx", "--save-dir", "imgs"], "holds the input SOURCE", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--save-dir", "."], "holds the input SOURCE", None),
    (infer, ["imgs", "-m", "m.onnx", "--json", "m.onnx"], "is the input --model", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--json", "m.pt", "--check", "m.pt"], "is the input --check", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--save", "o.mp4", "--json", "o.mp4"], "are the same file", None),
]


@pytest.mark.parametrize("cli,args,match,setup", CLASHES, ids=[" ".join(c[1][:1] + c[1][-2:]) for c in CLASHES])
def test_an_output_never_replaces_an_input(ws, cli, args, match, setup):
    run_case(ws, cli, args, match, setup, kind="clash")


def test_the_sidecar_beside_a_checkpoint_is_never_clobbered(ws):
    """demo-shapes.json (training history) beside demo-shapes.pt survives an export: sidecars are MODEL.onnx.json."""
    (ws / "m.json").write_text('{"history": "mine"}\n')
    result = export("onnx", "m.pt", "--imgsz", "128", "-o", "out.onnx", "--no-check", "--simplifier", "none")
    assert result.exit_code == 0, result.output
    assert (ws / "m.json").read_text() == '{"history": "mine"}\n'
    side = json.loads((ws / "out.onnx.json").read_text())
    assert side["clo_export_version"] and side["onnx"] == "out.onnx"
    FAULTS["clash"] += 1


def test_a_sidecar_replaces_only_its_own_kind(tmp_path):
    from clo_export.fileio import write_sidecar

    side = tmp_path / "best.onnx.json"
    write_sidecar(side, {"a": 1})
    write_sidecar(side, {"a": 2})  # ours: replaced
    assert json.loads(side.read_text())["a"] == 2
    side.write_text("[1, 2]\n")
    with pytest.raises(CloExportError, match="was not written by clo-export"):
        write_sidecar(side, {"a": 3})
    assert side.read_text() == "[1, 2]\n"
    write_sidecar(side, {"a": 4}, named_by_user=True)  # --json PATH named on the command line
    assert json.loads(side.read_text())["a"] == 4
    FAULTS["clash"] += 1


# ---------------------------------------------------------------------------------------------- 4. bad inputs: one line


def truncated(name: str):
    return lambda ws: (ws / name).write_bytes((ws / "m.onnx").read_bytes()[:4000])


def not_onnx(name: str):
    return lambda ws: (ws / name).write_text("this is not a model\n")


def with_metadata(name: str, **props: str):
    def make(ws: Path) -> None:
        model = onnx.load(str(ws / "m.onnx"))
        kept = {p.key: p.value for p in model.metadata_props}
        onnx.helper.set_model_props(model, {**kept, **props})
        onnx.save(model, str(ws / name))

    return make


def cfg_file(name: str, **changes):
    def make(ws: Path) -> None:
        from clo_export.models.yolo import DEFAULT_CFG

        d = yaml.safe_load(DEFAULT_CFG.read_text())
        for k, v in changes.items():
            if v is None:
                d.pop(k)
            else:
                d[k] = v
        (ws / name).write_text(yaml.safe_dump(d))

    return make


def junk_images(ws: Path) -> None:
    (ws / "junk").mkdir()
    for i in range(4):
        (ws / "junk" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 not a jpeg")


def half_unreadable(ws: Path) -> None:
    (ws / "half").mkdir()
    rng = np.random.default_rng(0)
    for i in range(20):
        cv2.imwrite(str(ws / "half" / f"ok{i:02d}.png"), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    for i in range(20):
        (ws / "half" / f"bad{i:02d}.jpg").write_bytes(b"garbage")


def a_file(name: str):
    return lambda ws: (ws / name).write_text("x")


def a_dir(name: str):
    return lambda ws: (ws / name).mkdir()


BAD_INPUTS = [
    (export, ["quantize", "t.onnx", "--calib", "imgs"], "not a readable ONNX model", truncated("t.onnx")),
    (export, ["check", "t.onnx", "-w", "m.pt", "-s", "imgs"], "not a readable ONNX model", truncated("t.onnx")),
    (infer, ["v.mp4", "-m", "t.onnx"], "not a readable ONNX model", truncated("t.onnx")),
    (export, ["quantize", "x.onnx", "--calib", "imgs"], "not a readable ONNX model", not_onnx("x.onnx")),
    (export, ["check", "x.onnx", "-w", "m.pt", "-s", "imgs"], "not a readable ONNX model", not_onnx("x.onnx")),
    (infer, ["v.mp4", "-m", "x.onnx"], "not a readable ONNX model", not_onnx("x.onnx")),
    (infer, ["v.mp4", "-m", "e.onnx"], "holds no ONNX graph", lambda ws: (ws / "e.onnx").write_bytes(b"")),
    (infer, ["v.mp4", "-m", "c.onnx"], "'names' must map class ids", with_metadata("c.onnx", names="{'a': 'person'}")),
    (
        infer,
        ["v.mp4", "-m", "c.onnx"],
        "metadata 'imgsz' is '[128,'",
        with_metadata("c.onnx", **{"clo_export.imgsz": "[128,"}),
    ),
    (infer, ["v.mp4", "-m", "c.onnx"], "'stride' is 'abc'", with_metadata("c.onnx", stride="abc")),
    (infer, ["v.mp4", "-m", "c.onnx"], "positive integers", with_metadata("c.onnx", **{"clo_export.imgsz": "[0, 0]"})),
    (infer, ["v.mp4", "-m", "c.onnx"], "'nc'", with_metadata("c.onnx", **{"clo_export.nc": "7"})),
    (infer, ["v.mp4", "-m", "c.onnx"], "'precision'", with_metadata("c.onnx", **{"clo_export.precision": "int4"})),
    (export, ["quantize", "c.onnx", "--calib", "imgs"], "'stride'", with_metadata("c.onnx", stride="-32")),
    (export, ["onnx", "m.pt", "--cfg", "c.yaml"], "'anchors' key is missing", cfg_file("c.yaml", anchors=None)),
    (export, ["onnx", "m.pt", "--cfg", "c.yaml"], "anchors must be a list", cfg_file("c.yaml", anchors=[[10, 13, 16]])),
    (export, ["onnx", "m.pt", "--cfg", "c.yaml"], "nc must be a positive integer", cfg_file("c.yaml", nc="three")),
    (export, ["onnx", "m.pt", "--cfg", "c.yaml"], "width_multiple", cfg_file("c.yaml", width_multiple=0)),
    (export, ["onnx", "m.pt", "--imgsz", "12800"], "of memory is available", None),
    (export, ["info", "m.pt", "--imgsz", "12800"], "of memory is available", None),
    (infer, ["v.mp4", "-m", "m.pt", "--imgsz", "12800"], "of memory is available", None),
    (export, ["onnx", "m.pt", "--imgsz", "128", "-o", "f/x.onnx"], "is a file, not a folder", a_file("f")),
    (export, ["onnx", "m.pt", "--imgsz", "128", "-o", "d"], "is a folder", a_dir("d")),
    (
        export,
        ["check", "m.onnx", "-w", "m.pt", "-s", "imgs", "--json", "f/r.json"],
        "is a file, not a folder",
        a_file("f"),
    ),
    (infer, ["v.mp4", "-m", "m.onnx", "--save", "f/o.mp4"], "is a file, not a folder", a_file("f")),
    (infer, ["v.mp4", "-m", "m.onnx", "--save", "d.mp4"], "is a folder", a_dir("d.mp4")),
    (infer, ["v.mp4", "-m", "m.onnx", "--json", "f/o.jsonl"], "is a file, not a folder", a_file("f")),
    (infer, ["v.mp4", "-m", "m.onnx", "--json", "d"], "is a folder", a_dir("d")),
    (infer, ["imgs", "-m", "m.onnx", "--save-dir", "f"], "is a file, not a folder", a_file("f")),
    (export, ["onnx", "m.pt", "--plugin", "nope.py"], "nope.py' does not exist", None),
    (export, ["onnx", "m.pt", "--imgsz", "128", "--source", "junk"], "could be read", junk_images),
    (export, ["onnx", "m.pt", "--imgsz", "128", "--source", "nowhere"], "'nowhere' does not exist", None),
    (
        export,
        ["quantize", "m.onnx", "--calib", "half", "--num", "16", "--min-agreement", "0.9"],
        "cannot be checked",
        half_unreadable,
    ),
    (export, ["quantize", "m.onnx", "--calib", "junk", "--num", "16", "--holdout", "16"], "could be read", junk_images),
    (
        export,
        ["quantize", "m.onnx", "--calib", "imgs", "--holdout", "4"],
        "--holdout 4 must be 0 (no accuracy report) or at least 16",
        None,
    ),
    (export, ["quantize", "m.onnx", "--calib", "imgs", "--seed", "-1"], "--seed -1", None),
    (export, ["quantize", "m.onnx", "--calib", "imgs", "--num", "0"], "--num 0", None),
    (export, ["demo", "--check-every", "0"], "--check-every 0", None),
    (export, ["demo", "--frames", "-5"], "--frames -5", None),
    (export, ["demo", "--frames", "0"], "--frames 0", None),
    (export, ["demo", "--calib", "0"], "--calib 0", None),
    (export, ["demo", "--calib", "3"], "--calib 3 must be at least 16", None),
    (export, ["demo", "--out", "f"], "is a file", a_file("f")),
    (export, ["check", "m.onnx", "-w", "m.pt", "-s", "imgs", "--limit", "0"], "--limit 0", None),
    (export, ["check", "m.onnx", "-w", "nope.pt", "-s", "imgs"], "does not exist", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--limit", "0"], "--limit 0", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--threads", "0"], "--threads 0", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--workers", "0"], "--workers 0", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--infer-batch", "0"], "--infer-batch 0", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--check-every", "0"], "--check-every 0", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--conf", "2"], "--conf 2", None),
    (infer, ["v.mp4", "-m", "nope.onnx"], "does not exist", None),
    (infer, ["nope.mp4", "-m", "m.onnx"], "does not exist", None),
]


@pytest.mark.parametrize(
    "cli,args,match,setup", BAD_INPUTS, ids=[f"{i}-{' '.join(c[1][:3])}" for i, c in enumerate(BAD_INPUTS)]
)
def test_bad_input_is_one_line(ws, cli, args, match, setup):
    run_case(ws, cli, args, match, setup)


# ------------------------------------------------------------------------------ 2. full and read-only filesystems


@pytest.fixture
def mounted(ws):
    """mount(name, size, ro): a small tmpfs inside the workspace (root only), unmounted afterwards."""
    mounts = []

    def mount(name: str, size: str = "96k", ro: bool = False) -> Path:
        if os.geteuid() != 0:
            pytest.skip("a real full/read-only filesystem needs root to mount a small tmpfs; run as root (CI does)")
        target = ws / name
        target.mkdir()
        opts = f"size={size}" + (",ro" if ro else "")
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(target)], capture_output=True, text=True)
        if r.returncode:
            target.rmdir()
            pytest.skip(
                f"cannot mount a tmpfs here ({r.stderr.strip() or r.returncode}); a container without CAP_SYS_ADMIN"
            )
        mounts.append(target)
        return target

    yield mount
    for target in mounts:
        subprocess.run(["umount", "-l", str(target)], check=False)


FULL_FS = [
    (infer, ["v.mp4", "-m", "m.onnx", "-q", "--save", "full/v.mp4"]),
    (infer, ["v.mp4", "-m", "m.onnx", "-q", "--json", "full/v.jsonl"]),
    (infer, ["v.mp4", "-m", "m.onnx", "-q", "--save-dir", "full/new"]),
    (infer, ["imgs", "-m", "m.onnx", "-q", "--save-dir", "full/ann"]),
    (export, ["onnx", "m.pt", "--imgsz", "128", "--no-check", "--simplifier", "none", "-o", "full/sub/m.onnx"]),
    (
        export,
        [
            "check",
            "m.onnx",
            "-w",
            "m.pt",
            "-s",
            "imgs",
            "--limit",
            "2",
            "--json",
            "full/r.json",
            "--report",
            "full/r.html",
        ],
    ),
]


@pytest.mark.parametrize("cli,args", FULL_FS, ids=[" ".join(c[1][-2:]) for c in FULL_FS])
def test_a_full_disk_is_one_line_and_leaves_nothing(ws, mounted, cli, args):
    full = mounted("full", "96k")
    with open(full / "filler", "wb", buffering=0) as f:  # a disk already full
        with pytest.raises(OSError):
            for _ in range(100):
                f.write(b"\0" * 4096)
    before = snapshot(ws)
    result = cli(*args)
    assert_refused(result, before, ws, "No space left on device", kind="full disk")


@pytest.mark.parametrize("args", [["--save", "full/v.mp4"], ["--save-dir", "full/new"]])
def test_a_disk_filling_up_mid_video_is_one_line_and_leaves_nothing(ws, mounted, args):
    """The writer opens, then the disk fills: the run fails in one line, no unplayable file is reported or left."""
    full = mounted("full", "96k")
    (full / "filler").write_bytes(b"\0" * 60_000)
    before = snapshot(ws)
    assert_refused(infer("v.mp4", "-m", "m.onnx", "-q", *args), before, ws, "No space left on device", kind="full disk")


READ_ONLY = [
    (infer, ["v.mp4", "-m", "m.onnx", "-q", "--save", "ro/v.mp4"]),
    (infer, ["v.mp4", "-m", "m.onnx", "-q", "--json", "ro/sub/v.jsonl"]),
    (infer, ["imgs", "-m", "m.onnx", "-q", "--save-dir", "ro/ann"]),
    (export, ["onnx", "m.pt", "--imgsz", "128", "--no-check", "--simplifier", "none", "-o", "ro/m.onnx"]),
]


@pytest.mark.parametrize("cli,args", READ_ONLY, ids=[" ".join(c[1][-2:]) for c in READ_ONLY])
def test_a_read_only_target_is_one_line_and_leaves_nothing(ws, mounted, cli, args):
    mounted("ro", "64k", ro=True)
    before = snapshot(ws)
    assert_refused(cli(*args), before, ws, "Read-only file system", kind="read-only")


# ---------------------------------------------------------------------------------------------- 2. signals


@pytest.mark.signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_video_leaves_complete_outputs(ws, sig):
    make_video(ws / "long.mp4", frames=LONG)
    before = snapshot(ws)
    proc, lines = start(
        [str(cli_path("clo-infer")), "long.mp4", "-m", "m.onnx", "-q", "--save", "out.mp4", "--json", "out.jsonl"], ws
    )
    wait_for(records_flowing(ws))
    proc.send_signal(sig)
    code, out = finish(proc, lines)
    assert code == 130, out
    assert "Traceback" not in out and "outputs closed and complete" in out
    cap = cv2.VideoCapture(str(ws / "out.mp4"))
    frames = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, _ = cap.read()
    cap.release()
    records = [json.loads(line) for line in (ws / "out.jsonl").read_text().splitlines()]
    assert ok and 0 < frames < LONG and len(records) == frames
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k in before} == before  # inputs untouched
    assert set(after) - set(before) == {"out.mp4", "out.jsonl"}  # no .part file
    FAULTS["signal"] += 1


@pytest.mark.signals
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_mid_export_leaves_nothing(ws, sig):
    before = snapshot(ws)
    proc, lines = start([str(cli_path("clo-export")), "onnx", "m.pt", "--imgsz", "384", "-o", "sig.onnx"], ws)
    wait_for(lambda: any("loaded m.pt" in line for line in lines))  # handlers are in place before the model loads
    proc.send_signal(sig)
    code, out = finish(proc, lines)
    assert code == 130, out
    assert "Traceback" not in out and len(error_lines(out)) == 1 and "interrupted" in error_lines(out)[0]
    assert snapshot(ws) == before
    FAULTS["signal"] += 1


# ---------------------------------------------------------------------------------------------- 3. the safe loader


BOMB = b"\x80\x02ctorch.nn.modules.linear\nLinear\nq\x00M NM N\x86Rh\x00M NM N\x86Rh\x00M NM N\x86R\x87."


def test_a_memory_bomb_pickle_is_refused_fast_and_small(tmp_path):
    """The 3x torch.nn.Linear(20000, 20000) pickle (5 GB if run): refused in < 1 s and < 200 MB, in a fresh process."""
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(BOMB)
    script = textwrap.dedent(f"""
        import json, resource, time
        from pathlib import Path
        from clo_export.errors import CloExportError
        from clo_export.models.checkpoint import read_checkpoint
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t0 = time.perf_counter()
        try:
            read_checkpoint(Path({str(bomb)!r}))
            message = None
        except CloExportError as e:
            message = str(e)
        grew = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({{"seconds": time.perf_counter() - t0, "grew_mb": grew, "message": message}}))
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    facts = json.loads(r.stdout.strip().splitlines()[-1])
    assert facts["message"] and "construct Linear(20000, 20000)" in facts["message"]
    assert facts["seconds"] < 1.0 and facts["grew_mb"] < 200, facts
    assert bomb.read_bytes() == BOMB
    FAULTS["crafted pickle"] += 1


class _Storage:
    """Stands for a storage in a crafted pickle; pickled as a persistent id claiming ``numel`` floats."""

    def __init__(self, numel: int):
        self.numel = numel


class _Tensor:
    def __init__(self, numel: int):
        self.storage = _Storage(numel)
        self.numel = numel

    def __reduce__(self):
        import torch

        return (
            torch._utils._rebuild_tensor_v2,
            (self.storage, 0, (self.numel,), (1,), False, collections.OrderedDict()),
        )


def crafted_checkpoint(path: Path, obj, claim: int) -> None:
    """A real torch zip checkpoint whose data.pkl is ``obj`` pickled with storages claiming ``claim`` floats."""
    import torch

    buf = io.BytesIO()
    torch.save({"w": torch.zeros(1)}, buf)

    class P(pickle.Pickler):
        def persistent_id(self, o):
            return ("storage", torch.FloatStorage, "0", "cpu", claim) if isinstance(o, _Storage) else None

    data = io.BytesIO()
    P(data, protocol=2).dump(obj)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as out:
        for name in src.namelist():
            out.writestr(name, data.getvalue() if name.endswith("data.pkl") else src.read(name))


def test_storage_claims_are_bounded_by_the_file(tmp_path):
    """A 1-float file claiming 2**31 floats is refused before anything is allocated; an honest claim loads."""
    from clo_export.models.checkpoint import read_checkpoint

    big = tmp_path / "claims.pt"
    crafted_checkpoint(big, {"w": _Tensor(2**31)}, 2**31)
    raw = big.read_bytes()
    with pytest.raises(CloExportError, match="claims at least 8,589,934,592 bytes of tensors"):
        read_checkpoint(big)
    assert big.read_bytes() == raw
    honest = tmp_path / "honest.pt"
    crafted_checkpoint(honest, {"w": _Tensor(1)}, 1)
    assert read_checkpoint(honest)["w"].shape == (1,)
    FAULTS["crafted pickle"] += 2


def test_hooks_and_constructors_from_a_pickle_are_refused(tmp_path):
    """Module states with hooks, tensors built by torch.Tensor(...), arrays of a chosen size: all refused."""
    from clo_export.models.checkpoint import read_checkpoint

    cases = {
        "tensor": b"\x80\x02ctorch\nTensor\nM N\x85R.",
        "ndarray": b"\x80\x02cnumpy\nndarray\nM N\x85R.",
        "reconstruct": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nM N\x85C\x01b\x87R.",
        "newobj-args": b"\x80\x02ctorch.nn.modules.linear\nLinear\nM NM N\x86\x81.",
        "hooks": b"\x80\x02ctorch.nn.modules.linear\nIdentity\n)\x81}X\x0e\x00\x00\x00_forward_hooksK\x00"
        b"ccollections\nOrderedDict\n\x85s\x62.",
        "os.system": b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.",
    }
    for name, data in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(data)
        with pytest.raises(CloExportError):
            read_checkpoint(path)
        assert path.read_bytes() == data
        FAULTS["crafted pickle"] += 1


# ---------------------------------------------------------------------------------------------- 6. hypothesis


@FAST
@given(st.binary(max_size=200))
def test_hypothesis_random_pickles_never_escape(data):
    """Random bytes behind a protocol-2 header: a CloExportError or a plain value, never another exception."""
    import tempfile

    from clo_export.models.checkpoint import read_checkpoint

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.pt"
        path.write_bytes(b"\x80\x02" + data)
        try:
            read_checkpoint(path)
        except CloExportError:
            pass
        assert path.read_bytes() == b"\x80\x02" + data
    FAULTS["hypothesis: pickle"] += 1


CALLABLES = [
    "torch.nn.modules.linear\nLinear",
    "torch.nn.modules.conv\nConv2d",
    "torch\nTensor",
    "numpy\nndarray",
    "torch._utils\n_rebuild_tensor_v2",
    "torch._utils\n_rebuild_parameter",
    "collections\ndefaultdict",
    "copyreg\n_reconstructor",
    "argparse\nNamespace",
    "torch\nSize",
    "numpy\ndtype",
    "torch\ndevice",
    "numpy.core.multiarray\n_reconstruct",
    "torch.nn.parameter\nParameter",
    "builtins\nobject",
]


@FAST
@given(st.sampled_from(CALLABLES), st.lists(st.integers(0, 2**31 - 1), max_size=4), st.sampled_from([b"R", b"\x81"]))
def test_hypothesis_allowed_globals_cannot_be_called_with_chosen_arguments(target, ints, op):
    """Any allow-listed global called (REDUCE) or constructed (NEWOBJ) with integer arguments: refused, fast."""
    import tempfile

    from clo_export.models.checkpoint import read_checkpoint

    args = b"(" + b"".join(b"J" + int(i).to_bytes(4, "little") for i in ints) + b"t"
    data = b"\x80\x02c" + target.encode() + b"\n" + args + op + b"."
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "x.pt"
        path.write_bytes(data)
        t0 = time.perf_counter()
        try:
            value = read_checkpoint(path)
        except CloExportError:
            value = None
        assert time.perf_counter() - t0 < 1.0
        assert value is None or not hasattr(value, "numel") or value.numel() == 0
    FAULTS["hypothesis: pickle"] += 1


def tiny_proto(props: dict[str, str]) -> onnx.ModelProto:
    """A one-node ONNX (Identity on a 1x3x64x64 input) carrying ``props`` as metadata."""
    h = onnx.helper
    graph = h.make_graph(
        [h.make_node("Identity", ["images"], ["output0"])],
        "g",
        [h.make_tensor_value_info("images", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
        [h.make_tensor_value_info("output0", onnx.TensorProto.FLOAT, [1, 3, 64, 64])],
    )
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])
    h.set_model_props(model, props)
    return model


META_KEYS = [
    "stride",
    "names",
    "clo_export.imgsz",
    "clo_export.nc",
    "clo_export.anchors",
    "clo_export.opset",
    "clo_export.precision",
    "clo_export.nms",
    "clo_export.nms_conf",
    "clo_export.nms_max_det",
    "clo_export.dynamic_batch",
]
META_VALUES = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        [
            "32",
            "abc",
            "-1",
            "1e400",
            "nan",
            "{0: 'a'}",
            "{'a': 0}",
            "[0, 0]",
            "[64, 64]",
            "[64,",
            "true",
            "3",
            "[[10, 13]]",
            "{0: 'a', 1: 'b'}",
            "['x', 'y']",
            "fp16",
            "0.5",
            "1e9",
            "null",
            "{}",
        ]
    ),
)


@FAST
@given(st.dictionaries(st.sampled_from(META_KEYS), META_VALUES, max_size=len(META_KEYS)))
def test_hypothesis_crafted_metadata_is_refused_or_sane(props):
    from clo_export.artifacts import read_metadata

    try:
        meta = read_metadata(tiny_proto(props))
    except CloExportError:
        FAULTS["hypothesis: metadata"] += 1
        return
    assert isinstance(meta.stride, int) and meta.stride >= 1
    assert meta.names and all(isinstance(k, int) and k >= 0 for k in meta.names)
    assert meta.imgsz is None or (len(meta.imgsz) == 2 and min(meta.imgsz) > 0)
    assert meta.nc == len(meta.names) and meta.precision in (None, "fp32", "fp16", "int8")
    FAULTS["hypothesis: metadata"] += 1


@FAST
@given(st.floats(0, 1), st.binary(max_size=16))
def test_hypothesis_damaged_onnx_files_are_one_error(cut, noise):
    """A real ONNX cut anywhere (plus noise): read_metadata gives ModelMeta or a CloExportError."""
    import tempfile

    from clo_export.artifacts import read_metadata

    raw = artifacts().onnx.read_bytes()
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "m.onnx"
        path.write_bytes(raw[: int(len(raw) * cut)] + noise)
        try:
            read_metadata(path)
        except CloExportError:
            pass
    FAULTS["hypothesis: onnx"] += 1


_SCALARS = st.none() | st.booleans() | st.integers(-5, 300) | st.floats(-2, 2) | st.text(max_size=8)
YAML_VALUES = st.one_of(_SCALARS, st.lists(_SCALARS, max_size=4), st.lists(st.lists(_SCALARS, max_size=4), max_size=4))


@FAST
@given(st.sampled_from(["nc", "anchors", "depth_multiple", "width_multiple", "backbone", "head"]), YAML_VALUES)
@example("anchors", [[1, 1]])  # fewer anchor levels than Detect inputs (found by hypothesis)
def test_hypothesis_malformed_model_yaml_is_one_error(key, value):
    """The bundled YAML with one key replaced by anything: a CloExportError or a config that builds."""
    from clo_export.models.yolo import DEFAULT_CFG, DetectionModel, load_cfg

    d = load_cfg(DEFAULT_CFG)
    d[key] = value
    try:
        DetectionModel(load_cfg(d))
    except CloExportError:
        pass
    FAULTS["hypothesis: yaml"] += 1


@FAST
@given(
    limit=st.integers(-2, 3),
    batch=st.integers(-2, 3),
    threads=st.integers(-1, 2),
    workers=st.integers(-1, 2),
    max_det=st.integers(-1, 2),
    check_every=st.integers(-1, 2),
    conf=st.floats(-1, 2),
    iou=st.floats(-1, 2),
)
def test_hypothesis_infer_options_are_checked_before_work(
    tmp_path_factory, limit, batch, threads, workers, max_det, check_every, conf, iou
):
    """Any combination of numbers: one error line naming an option or the missing source, nothing written."""
    root = tmp_path_factory.mktemp("opts")
    shutil.copy(artifacts().onnx, root / "m.onnx")
    before = snapshot(root)
    result = infer(
        str(root / "nowhere.mp4"),
        "-m",
        str(root / "m.onnx"),
        "--limit",
        limit,
        "--infer-batch",
        batch,
        "--threads",
        threads,
        "--workers",
        workers,
        "--max-det",
        max_det,
        "--check-every",
        check_every,
        "--conf",
        conf,
        "--iou",
        iou,
        "--save",
        str(root / "o.mp4"),
        "--json",
        str(root / "o.jsonl"),
    )
    assert_refused(result, before, root, kind="hypothesis: CLI options")


@FAST
@given(
    imgsz=st.text(max_size=8),
    batch=st.integers(-2, 4),
    opset=st.integers(0, 30),
    conf=st.floats(-1, 2),
    max_det=st.integers(-2, 2),
    nms=st.booleans(),
)
def test_hypothesis_onnx_options_are_checked_before_work(tmp_path_factory, imgsz, batch, opset, conf, max_det, nms):
    root = tmp_path_factory.mktemp("opts")
    before = snapshot(root)
    args = [
        "onnx",
        str(root / "missing.pt"),
        "--imgsz",
        imgsz,
        "--batch",
        batch,
        "--opset",
        opset,
        "--conf",
        conf,
        "--max-det",
        max_det,
    ] + (["--nms"] if nms else [])
    result = export(*args)
    if result.exit_code == 2:  # click refused the value itself (e.g. '--imgsz -x' parsed as an option): one usage line
        assert "Traceback" not in result.output and result.exception is None or isinstance(result.exception, SystemExit)
        FAULTS["hypothesis: CLI options"] += 1
        return
    assert_refused(result, before, root, kind="hypothesis: CLI options")


@FAST
@given(frames=st.integers(-3, 50), calib=st.integers(-3, 15), check_every=st.integers(-2, 5))
def test_hypothesis_demo_options_are_checked_before_work(tmp_path_factory, frames, calib, check_every):
    """--calib below 16 always: the demo must refuse before writing anything (0 is never the default)."""
    root = tmp_path_factory.mktemp("demo")
    before = snapshot(root)
    result = export(
        "demo", "--out", str(root / "out"), "--frames", frames, "--calib", calib, "--check-every", check_every
    )
    assert_refused(result, before, root, kind="hypothesis: CLI options")


@FAST
@given(num=st.integers(-2, 300), holdout=st.integers(-2, 15), seed=st.integers(-3, 3))
def test_hypothesis_quantize_options_are_checked_before_work(tmp_path_factory, num, holdout, seed):
    root = tmp_path_factory.mktemp("q")
    shutil.copy(artifacts().onnx, root / "m.onnx")
    before = snapshot(root)
    result = export(
        "quantize",
        str(root / "m.onnx"),
        "--calib",
        str(root / "nowhere"),
        "--num",
        num,
        "--holdout",
        holdout,
        "--seed",
        seed,
    )
    assert_refused(result, before, root, kind="hypothesis: CLI options")


def test_counts_unreadable_files_and_warns(ws, caplog):
    """Some unreadable images: the comparison runs on the readable ones and a warning gives the counts."""
    from clo_export.data.files import read_images

    (ws / "imgs" / "bad.jpg").write_bytes(b"garbage")
    with caplog.at_level("WARNING", logger="clo_export"):
        frames = list(read_images(ws / "imgs"))
    assert len(frames) == 3
    assert any(
        "1 unreadable file(s) skipped" in r.getMessage() and "3 image(s) read" in r.getMessage() for r in caplog.records
    )
    FAULTS["bad input"] += 1


def test_a_video_that_cannot_be_finalized_is_not_reported(tmp_path):
    """VideoSink.close() checks the file plays; a broken one raises and is removed (never 'wrote …')."""
    from clo_export.data.readers import Frame
    from clo_export.data.sinks import VideoSink, video_problem

    sink = VideoSink(tmp_path / "v.mp4", 12.0, (64, 48))
    img = np.zeros((48, 64, 3), np.uint8)
    for i in range(3):
        sink.write(Frame(i, None, img, "x"), np.zeros((0, 6)), None)
    sink.writer.release()  # what a full disk does: the writer ends without a playable file
    sink.tmp.write_bytes(b"\x00" * 100)
    sink.writer = cv2.VideoWriter()  # closed writer, so close() goes on to the check
    with pytest.raises(CloExportError, match="cannot write .*v.mp4"):
        sink.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == [] and sink.outputs == []
    assert video_problem(artifacts().video) is None
    FAULTS["full disk"] += 1
