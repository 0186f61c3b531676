"""Fault injection, outputs: device and pipe targets, links, special files, triton --overwrite with the user's files,
clashing names, Inf/NaN models, SIGHUP, stale temporary files, names too long, a demo folder that is not ours.

Same harness and guarantees as ``tests/test_faults.py``: a real command in a folder of real inputs; exit code,
one ``error:`` line, no traceback, inputs and unrelated files byte-identical, nothing left behind. Device nodes
are made with ``os.mknod`` (copies of /dev/null (1, 3) and /dev/full (1, 7)) in the test's folder: root only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from clo_export.fileio import json_text, remove_stale_parts
from tests.faults_harness import (
    FAULTS,
    LONG,
    assert_refused,
    cli_path,
    error_lines,
    export,
    infer,
    records_flowing,
    snapshot,
    start,
    wait_for,
)
from tests.helpers import make_video


def assert_one_error(result, before: dict[str, str], root: Path, match: str, kind: str) -> None:
    assert_refused(result, before, root, match, kind=kind)


pytestmark = pytest.mark.usefixtures("tally")


def assert_ok(result) -> None:
    assert result.exit_code == 0, (result.output, repr(result.exception))
    assert "Traceback" not in result.output and not error_lines(result.output)


def device(path: Path, minor: int) -> Path:
    """A character device node like /dev/null (minor 3) or /dev/full (minor 7) at ``path``."""
    try:
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    except PermissionError:
        pytest.skip("making device nodes needs root")
    return path


def strict_lines(text: str) -> list[dict]:
    """JSON Lines parsed as strict JSON (NaN, Infinity rejected, as Node's JSON.parse does)."""

    def refuse(name):
        raise ValueError(f"not JSON: {name}")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


# ---------------------------------------------------------------------------------------------- 1. targets by kind


def test_json_to_a_null_device_keeps_the_device_and_writes_nothing_beside_it(ws):
    null = device(ws / "null", 3)
    before = snapshot(ws)
    assert_ok(infer("imgs", "-m", "m.onnx", "-q", "--json", "null"))
    assert snapshot(ws) == before and stat.S_ISCHR(null.lstat().st_mode)
    FAULTS["device target"] += 1


@pytest.mark.parametrize(
    "cli, args",
    [
        (infer, ["imgs", "-m", "m.onnx", "-q", "--json", "full"]),
        (export, ["onnx", "m.pt", "--imgsz", "128", "-o", "full"]),
    ],
    ids=["infer", "onnx"],
)
def test_a_full_device_is_one_line_and_stays_a_device(ws, cli, args):
    device(ws / "full", 7)
    before = snapshot(ws)
    assert_one_error(cli(*args), before, ws, "No space left on device", "device target")


def test_onnx_export_to_a_device_drops_no_sidecar(ws):
    device(ws / "null", 3)
    before = snapshot(ws)
    assert_ok(export("onnx", "m.pt", "--imgsz", "128", "-o", "null"))
    assert snapshot(ws) == before  # no null.json
    FAULTS["device target"] += 1


@pytest.mark.slow
def test_quantize_to_a_device_drops_no_report_or_cache(ws):
    device(ws / "null", 3)
    rng = np.random.default_rng(0)
    (ws / "cal").mkdir()
    for i in range(36):
        cv2.imwrite(str(ws / "cal" / f"c{i:02d}.png"), rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    before = snapshot(ws)
    result = export(
        "quantize", "m.onnx", "--calib", "cal", "--num", "16", "--holdout", "16", "--min-agreement", "0", "-o", "null"
    )
    assert_ok(result)
    assert snapshot(ws) == before  # no null.accuracy.json, null.calib.json, null.json
    FAULTS["device target"] += 1


def test_json_lines_into_a_pipe_arrive_in_order(ws):
    fifo = ws / "dets.fifo"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    before = snapshot(ws)
    assert_ok(infer("imgs", "-m", "m.onnx", "-q", "--json", "dets.fifo"))
    reader.join(30)
    records = strict_lines(got[0].decode())
    assert [r["frame"] for r in records] == [0, 1, 2]
    assert snapshot(ws) == before and stat.S_ISFIFO(fifo.lstat().st_mode)
    FAULTS["device target"] += 1


def test_a_link_is_kept_and_the_file_it_points_to_replaced(ws):
    (ws / "real").mkdir()
    (ws / "real" / "out.jsonl").write_text("old\n")
    os.symlink("real/out.jsonl", ws / "link.jsonl")
    assert_ok(infer("imgs", "-m", "m.onnx", "-q", "--json", "link.jsonl"))
    assert os.readlink(ws / "link.jsonl") == "real/out.jsonl"
    assert len(strict_lines((ws / "real" / "out.jsonl").read_text())) == 3
    assert not [p for p in ws.rglob(".*part*")]
    FAULTS["link target"] += 1


def test_a_link_to_a_sidecar_target_keeps_the_link(ws):
    os.symlink("m2.onnx.real", ws / "m2.onnx")
    assert_ok(export("onnx", "m.pt", "--imgsz", "128", "-o", "m2.onnx"))
    assert (ws / "m2.onnx").is_symlink() and onnx.load(str(ws / "m2.onnx.real")).graph.node
    FAULTS["link target"] += 1


def a_socket(ws: Path) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(ws / "sock"))
    s.close()


def a_block_device(ws: Path) -> None:
    try:
        os.mknod(ws / "sock", stat.S_IFBLK | 0o600, os.makedev(7, 0))
    except PermissionError:
        pytest.skip("making device nodes needs root")


@pytest.mark.parametrize(
    "make, what",
    [(a_socket, "a socket"), (a_block_device, "a block device"), (lambda ws: (ws / "sock").mkdir(), "folder")],
    ids=["socket", "block", "folder"],
)
@pytest.mark.parametrize(
    "cli, args",
    [(infer, ["imgs", "-m", "m.onnx", "--json", "sock"]), (export, ["onnx", "m.pt", "--imgsz", "128", "-o", "sock"])],
    ids=["infer", "onnx"],
)
def test_other_special_targets_are_refused(ws, make, what, cli, args):
    make(ws)
    before = snapshot(ws)
    assert_one_error(cli(*args), before, ws, what, "special target")


# ---------------------------------------------------------------------------------------------- 2. triton --overwrite


def test_triton_overwrite_replaces_only_what_it_wrote(ws):
    (ws / "repo").mkdir()
    (ws / "repo" / "README.md").write_text("the user's own notes on this repository\n")
    first = export("triton", "m.onnx", "-o", "repo", "--name", "det")
    assert_ok(first)
    assert "repo/det.README.md" in first.output.replace("\n", "")
    (ws / "repo" / "NOTES.txt").write_text("mine\n")
    (ws / "repo" / "det_model" / "2").mkdir()
    (ws / "repo" / "det_model" / "2" / "model.onnx").write_bytes(b"my version 2")
    (ws / "repo" / "det_model" / "1" / "model.plan").write_bytes(b"my plan")
    user = {k: v for k, v in snapshot(ws).items() if "NOTES" in k or "/2" in k or "plan" in k or k == "repo/README.md"}
    before = snapshot(ws)
    assert_one_error(
        export("triton", "m.onnx", "-o", "repo", "--name", "det"), before, ws, "--overwrite", "triton overwrite"
    )
    again = export("triton", "m.onnx", "-o", "repo", "--name", "det", "--overwrite")
    assert_ok(again)
    after = snapshot(ws)
    assert {k: after.get(k) for k in user} == user  # every file of the user's byte-identical
    text = " ".join(again.output.split())
    assert "kept (not written by clo-export): det_model/1/model.plan, det_model/2/" in text
    assert "see repo/det.README.md" in text
    assert not [p for p in (ws / "repo").rglob(".*part*")]
    FAULTS["triton overwrite"] += 1


def test_triton_overwrite_removes_its_own_earlier_files_only(ws):
    assert_ok(export("triton", "m.onnx", "-o", "repo", "--name", "det"))
    (ws / "repo" / "NOTES.txt").write_text("mine\n")
    assert_ok(export("triton", "m.onnx", "-o", "repo", "--name", "det", "--model-version", "2", "--overwrite"))
    repo = ws / "repo"
    assert not (repo / "det_model" / "1").exists() and (repo / "det_model" / "2" / "model.onnx").is_file()
    assert (repo / "NOTES.txt").read_text() == "mine\n"
    manifest = json.loads((repo / ".clo-export-manifest.json").read_text())["files"]
    assert "det_model/2/model.onnx" in manifest and not [f for f in manifest if f.startswith("det_model/1/")]
    assert all((repo / f).exists() for f in manifest) and "NOTES.txt" not in manifest
    FAULTS["triton overwrite"] += 1


def test_triton_overwrite_never_replaces_a_file_it_did_not_write(ws):
    (ws / "repo" / "det_model").mkdir(parents=True)
    (ws / "repo" / "det_model" / "config.pbtxt").write_text('name: "det_model"\nplatform: "onnxruntime_onnx"\n')
    before = snapshot(ws)
    assert_one_error(
        export("triton", "m.onnx", "-o", "repo", "--name", "det", "--overwrite"),
        before,
        ws,
        "not written by clo-export",
        "triton overwrite",
    )


def test_triton_name_too_long_is_refused_before_any_folder(ws):
    before = snapshot(ws)
    assert_one_error(
        export("triton", "m.onnx", "-o", "newrepo", "--name", "n" * 250), before, ws, "shorter name", "name too long"
    )


# ---------------------------------------------------------------------------------------------- 3. names that clash


def test_same_file_names_in_different_folders_give_different_outputs(ws):
    rng = np.random.default_rng(0)
    for rel in ("a/x.jpg", "a/x_2.jpg", "b/x.jpg"):
        (ws / "clash" / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(ws / "clash" / rel), rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))
    result = infer("clash", "-m", "m.onnx", "-q", "--save-dir", "ann")
    assert_ok(result)
    assert sorted(p.relative_to(ws / "ann").as_posix() for p in (ws / "ann").rglob("*.jpg")) == [
        "a/x.jpg",
        "a/x_2.jpg",
        "b/x.jpg",
    ]
    wrote = [line for line in result.output.splitlines() if line.startswith("wrote")]
    assert len(set(wrote)) == 3
    FAULTS["clashing names"] += 1


def test_an_output_that_another_output_could_replace_is_refused(ws):
    before = snapshot(ws)
    assert_one_error(
        infer("imgs", "-m", "m.onnx", "--json", "ann/img0.jpg", "--save-dir", "ann"),
        before,
        ws,
        "--save-dir",
        "clashing names",
    )


def test_demo_refuses_a_folder_with_the_users_files(ws):
    (ws / "mine").mkdir()
    (ws / "mine" / "notes.txt").write_text("mine\n")
    before = snapshot(ws)
    assert_one_error(export("demo", "--quick", "--out", "mine"), before, ws, "not written by a demo", "demo folder")
    (ws / "mine" / "demo.mp4").write_bytes(b"my own video")
    before = snapshot(ws)
    assert_one_error(export("demo", "--quick", "--out", "mine", "--overwrite"), before, ws, "demo.mp4", "demo folder")


@pytest.mark.slow
def test_an_interrupted_demo_leaves_only_the_users_files(ws):
    (ws / "mine").mkdir()
    (ws / "mine" / "notes.txt").write_text("mine\n")
    before = snapshot(ws)
    proc, lines = start([str(cli_path("clo-export")), "demo", "--quick", "--out", "mine", "--overwrite"], ws)
    wait_for(lambda: (ws / "mine" / "calib").is_dir() and any((ws / "mine" / "calib").iterdir()), timeout=180)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130, "".join(lines)
    time.sleep(0.1)
    out = "".join(lines)
    assert "Traceback" not in out and "no partial output was left" in out
    assert snapshot(ws) == before
    FAULTS["signal"] += 1


# ---------------------------------------------------------------------------------------------- 4. strict JSON


def non_finite_model(src: Path, dst: Path, channel: int, value: float) -> Path:
    """``src`` with its raw output multiplied by ``value`` in one channel (4: objectness -> scores; 0: box x)."""
    m = onnx.load(str(src))
    out = m.graph.output[0]
    n = out.type.tensor_type.shape.dim[-1].dim_value
    for node in m.graph.node:
        node.output[:] = ["raw" if o == out.name else o for o in node.output]
    scale = np.ones((1, 1, n), np.float32)
    scale[0, 0, channel] = value
    m.graph.initializer.append(onnx.numpy_helper.from_array(scale, "scale"))
    m.graph.node.append(onnx.helper.make_node("Mul", ["raw", "scale"], [out.name]))
    onnx.save(m, str(dst))
    return dst


@pytest.mark.parametrize("channel, value", [(4, np.inf), (0, np.nan)], ids=["inf-scores", "nan-boxes"])
def test_non_finite_detections_are_dropped_counted_and_never_written(ws, channel, value):
    non_finite_model(ws / "m.onnx", ws / "bad.onnx", channel, value)
    result = infer("imgs", "-m", "bad.onnx", "--json", "out.jsonl")
    assert_ok(result)
    records = strict_lines((ws / "out.jsonl").read_text())
    assert len(records) == 3 and all(not r["detections"] for r in records)
    assert "detection(s) with NaN/Infinity dropped" in " ".join(result.output.split())
    FAULTS["strict json"] += 1


def test_reports_are_strict_json_with_the_reason():
    text = json_text({"max_abs": float("nan"), "stats": [1.0, float("inf")], "ok": 1}, indent=2)
    data = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data == {"max_abs": None, "stats": [1.0, None], "ok": 1, "non_finite": {"max_abs": "nan", "stats[1]": "inf"}}


def test_a_check_of_an_inf_model_writes_a_strict_report(ws):
    non_finite_model(ws / "m.onnx", ws / "bad.onnx", 4, np.inf)
    result = export("check", "bad.onnx", "-w", "m.pt", "-s", "imgs", "--json", "rep.json")
    assert "Traceback" not in result.output and result.exit_code in (0, 1)
    data = json.loads((ws / "rep.json").read_text(), parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert data.get("non_finite") and not data.get("passed", False)
    FAULTS["strict json"] += 1


# ---------------------------------------------------------------------------------------------- 5. leftovers


def test_sighup_mid_video_leaves_complete_outputs(ws):
    make_video(ws / "long.mp4", frames=LONG)
    before = snapshot(ws)
    proc, lines = start(
        [str(cli_path("clo-infer")), "long.mp4", "-m", "m.onnx", "-q", "--save", "out.mp4", "--json", "out.jsonl"], ws
    )
    wait_for(records_flowing(ws))
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(60) == 130, "".join(lines)
    time.sleep(0.1)
    assert "Traceback" not in "".join(lines)
    records = strict_lines((ws / "out.jsonl").read_text())
    assert 0 < len(records) < LONG
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"out.mp4", "out.jsonl"}
    FAULTS["signal"] += 1


def dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_temporary_files_of_a_killed_run_are_removed_by_the_next(ws):
    pid = dead_pid()
    stale = [ws / f".out.part{pid}.jsonl", ws / f".out.jsonl.part{pid}.k3j4h5"]
    alive = ws / ".out.part1.jsonl"  # pid 1 runs: its file may still be written
    for p in [*stale, alive]:
        p.write_text("half")
    assert_ok(infer("imgs", "-m", "m.onnx", "-q", "--json", "out.jsonl"))
    assert not any(p.exists() for p in stale) and alive.exists()
    assert len(strict_lines((ws / "out.jsonl").read_text())) == 3
    assert remove_stale_parts(ws / "out.jsonl") == []
    FAULTS["stale part"] += 1


def test_a_staging_folder_of_a_killed_triton_run_is_removed_by_the_next(ws):
    stale = ws / "repo" / f".det.part{dead_pid()}.k3j4h5ab"
    (stale / "det_model" / "1").mkdir(parents=True)
    (stale / "det_model" / "1" / "model.onnx").write_bytes(b"half")
    assert_ok(export("triton", "m.onnx", "-o", "repo", "--name", "det"))
    assert not stale.exists() and not list((ws / "repo").glob(".*part*"))
    FAULTS["stale part"] += 1


def test_a_name_too_long_is_refused_before_any_work_or_folder(ws):
    before = snapshot(ws)
    assert_one_error(
        infer("imgs", "-m", "m.onnx", "--json", "new/" + "n" * 300 + ".jsonl"),
        before,
        ws,
        "shorter name",
        "name too long",
    )
    assert_one_error(
        export("onnx", "m.pt", "--imgsz", "128", "-o", "new/" + "n" * 248 + ".onnx"),
        before,
        ws,
        "shorter name",
        "name too long",
    )  # the sidecar's name (+ .json) is what does not fit
    assert_one_error(
        infer("imgs", "-m", "m.onnx", "--save-dir", "new/" + "n" * 300), before, ws, "shorter name", "name too long"
    )
    assert_one_error(
        export("demo", "--quick", "--out", "new/" + "n" * 300), before, ws, "shorter name", "name too long"
    )


def test_a_long_name_that_fits_is_written(ws):
    name = "n" * 245 + ".jsonl"  # its temporary name would have been longer than 255 bytes
    assert_ok(infer("imgs", "-m", "m.onnx", "-q", "--json", name))
    assert len(strict_lines((ws / name).read_text())) == 3 and not list(ws.glob(".*part*"))
    FAULTS["name too long"] += 1
