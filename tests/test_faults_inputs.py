"""Fault injection, inputs by kind: FIFOs, decompression bombs, foreign ONNX layouts, odd option values, an ASCII
locale, a deleted working folder, signals.

The harness is tests/test_faults.py's (its ``ws`` folder of real inputs, ``export``/``infer`` through Typer's runner,
the one-error-line checks). Cases that could block (a FIFO opened for reading never returns) run as real subprocesses
under a time limit and must end within seconds. Every case asserts the exit code, one ``error:`` line, no traceback,
and the folder exactly as before (special files recorded by kind, never opened).
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import struct
import subprocess
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from clo_export.data.files import MAX_PIXELS, image_size
from clo_export.errors import memory_error_text
from tests.faults_harness import (
    FAULTS,
    LONG,
    assert_refused,
    cli_path,
    export,
    infer,
    records_flowing,
    snapshot,
    start,
    wait_for,
)

QUICK = 20.0  # seconds a refused input may take, interpreter start-up included (a blocked open never returns)

pytestmark = pytest.mark.usefixtures("tally")


class Ran:
    """A finished subprocess in the shape of a CliRunner result."""

    def __init__(self, proc: subprocess.CompletedProcess, seconds: float):
        self.exit_code, self.output, self.exception, self.seconds = proc.returncode, proc.stdout, None, seconds


def run_bounded(args: list[str], cwd: Path, env: dict | None = None, limit: float = 120.0) -> Ran:
    """Run a command as a subprocess; a case that blocks fails at ``limit`` instead of hanging the suite."""
    t0 = time.monotonic()
    proc = subprocess.run(
        args,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=limit,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )
    return Ran(proc, time.monotonic() - t0)


# ---------------------------------------------------------------------------------------------- FIFOs, never opened


def fifo(name: str):
    return lambda ws: os.mkfifo(ws / name)


def calib_list(ws: Path) -> None:
    os.mkfifo(ws / "f.jpg")
    (ws / "list.txt").write_text("imgs/img0.jpg\nimgs/img1.png\nf.jpg\n")


FIFOS = [
    ("clo-infer", ["fifo.mp4", "-m", "m.onnx"], "SOURCE 'fifo.mp4' is a FIFO", fifo("fifo.mp4")),
    ("clo-infer", ["f.jpg", "-m", "m.onnx", "--json", "o.jsonl"], "SOURCE 'f.jpg' is a FIFO", fifo("f.jpg")),
    ("clo-infer", ["*.jpg", "-m", "m.onnx", "--json", "o.jsonl"], "image 'f.jpg' is a FIFO", fifo("f.jpg")),
    ("clo-infer", ["v.mp4", "-m", "p.onnx"], "--model 'p.onnx' is a FIFO", fifo("p.onnx")),
    ("clo-infer", ["v.mp4", "-m", "m.onnx", "--check", "p.pt"], "--check 'p.pt' is a FIFO", fifo("p.pt")),
    ("clo-export", ["check", "m.onnx", "-w", "m.pt", "--source", "fifo"], "--source 'fifo' is a FIFO", fifo("fifo")),
    ("clo-export", ["check", "m.onnx", "-w", "m.pt", "--source", "*.jpg"], "image 'f.jpg' is a FIFO", fifo("f.jpg")),
    ("clo-export", ["quantize", "m.onnx", "--calib", "list.txt"], "file 'f.jpg' is a FIFO", calib_list),
    ("clo-export", ["quantize", "m.onnx", "--calib", "fifo.txt"], "--calib 'fifo.txt' is a FIFO", fifo("fifo.txt")),
    ("clo-export", ["onnx", "m.pt", "--imgsz", "128", "--source", "fifo.mp4"], "is a FIFO", fifo("fifo.mp4")),
    ("clo-export", ["trt", "p.onnx", "--dry-run"], "'p.onnx' is a FIFO", fifo("p.onnx")),
]


@pytest.mark.parametrize("cmd,args,match,setup", FIFOS, ids=[f"{c[0]} {' '.join(c[1][:3])}" for c in FIFOS])
def test_a_fifo_where_a_file_is_expected_is_refused_at_once(ws, cmd, args, match, setup):
    setup(ws)
    before = snapshot(ws)
    ran = run_bounded([str(cli_path(cmd)), *args], ws)
    assert ran.seconds < QUICK, f"took {ran.seconds:.1f} s"
    assert_refused(ran, before, ws, match, kind="FIFO")


def test_sockets_and_devices_are_refused_by_kind(ws):
    import socket

    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(ws / "s.mp4"))
    try:
        os.symlink("/dev/zero", ws / "z.jpg")  # an endless "image"
        (ws / "list.txt").write_text("imgs/img0.jpg\nz.jpg\n")
        before = snapshot(ws)
        assert_refused(infer("s.mp4", "-m", "m.onnx"), before, ws, "SOURCE 's.mp4' is a socket", kind="FIFO")
        assert_refused(
            infer("/dev/null", "-m", "m.onnx"), before, ws, "SOURCE '/dev/null' is a character device", kind="FIFO"
        )
        assert_refused(
            export("check", "m.onnx", "-w", "m.pt", "--source", "/dev/zero"),
            before,
            ws,
            "is a character device",
            kind="FIFO",
        )
        assert_refused(
            export("quantize", "m.onnx", "--calib", "list.txt"),
            before,
            ws,
            "file 'z.jpg' is a character device",
            kind="FIFO",
        )
        assert_refused(infer("z.jpg", "-m", "m.onnx"), before, ws, "SOURCE 'z.jpg' is a character device", kind="FIFO")
    finally:
        sock.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a character device needs root")
def test_a_video_device_path_is_answered_with_the_webcam_index(ws):
    os.mknod(ws / "video3", stat.S_IFCHR | 0o600, os.makedev(1, 3))  # a copy of /dev/null named like /dev/video3
    assert_refused(
        infer("video3", "-m", "m.onnx"), snapshot(ws), ws, "a camera is opened by its index: pass 3", kind="FIFO"
    )


def test_a_fifo_inside_a_folder_is_left_out_and_the_images_are_read(ws):
    os.mkfifo(ws / "imgs" / "f.jpg")
    ran = run_bounded([str(cli_path("clo-infer")), "imgs", "-m", "m.onnx", "-q", "--json", "o.jsonl"], ws)
    assert ran.exit_code == 0 and ran.seconds < 60, ran.output
    assert len((ws / "o.jsonl").read_text().splitlines()) == 3
    FAULTS["FIFO"] += 1


# ---------------------------------------------------------------------------------------------- decompression bombs


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid grayscale PNG of ``width`` x ``height`` black pixels: a few hundred KB that decode to GBs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = bytes(1 + width)  # filter byte + one gray byte per pixel
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def jpeg_claiming(path: Path, width: int, height: int) -> Path:
    """A real JPEG whose frame header (SOF0) is rewritten to claim ``width`` x ``height``."""
    ok, buf = cv2.imencode(".jpg", np.full((16, 16, 3), 128, np.uint8))
    data = bytearray(buf.tobytes())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = height.to_bytes(2, "big") + width.to_bytes(2, "big")
    path.write_bytes(bytes(data))
    return path


@pytest.fixture(scope="module")
def bomb(tmp_path_factory) -> Path:
    """20000 x 20000 (400 MP, 1.2 GB as BGR) in about 400 KB."""
    return png_bomb(tmp_path_factory.mktemp("bomb") / "bomb.png", 20000, 20000)


def test_the_png_bomb_is_what_it_claims(bomb):
    assert bomb.stat().st_size < 1_000_000
    assert image_size(bomb) == (20000, 20000)
    small = png_bomb(bomb.parent / "small.png", 40, 30)
    assert cv2.imread(str(small), cv2.IMREAD_UNCHANGED).shape == (30, 40)  # the generator writes PNGs OpenCV decodes


def test_header_sizes_match_what_opencv_decodes(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (123, 457, 3), dtype=np.uint8)
    cases = {
        "a.png": [],
        "b.jpg": [],
        "c.jpg": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
        "d.bmp": [],
        "e.webp": [cv2.IMWRITE_WEBP_QUALITY, 80],
        "f.webp": [cv2.IMWRITE_WEBP_QUALITY, 101],
    }
    for name, params in cases.items():
        cv2.imwrite(str(tmp_path / name), img, params)
    cv2.imwrite(str(tmp_path / "g.webp"), np.dstack([img, img[..., :1]]), [cv2.IMWRITE_WEBP_QUALITY, 80])  # VP8X
    cv2.imwrite(str(tmp_path / "h.png"), img[..., 0])
    for p in sorted(tmp_path.iterdir()):
        decoded = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert image_size(p) == (decoded.shape[1], decoded.shape[0]), p.name
    assert image_size(jpeg_claiming(tmp_path / "big.jpg", 60000, 50000)) == (60000, 50000)


def tiff_claiming(path: Path, width: int, height: int, big_endian: bool = False) -> Path:
    """A minimal uncompressed 8-bit grayscale TIFF whose first directory claims ``width`` x ``height`` (LONG tags)."""
    o = ">" if big_endian else "<"
    entries = [
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 8),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, width * height),
    ]
    ifd = (
        struct.pack(o + "H", len(entries))
        + b"".join(
            struct.pack(o + "HHI", tag, kind, count)
            + (struct.pack(o + "H", v) + b"\0\0" if kind == 3 else struct.pack(o + "I", v))
            for tag, kind, count, v in entries
        )
        + b"\0\0\0\0"
    )
    head = (b"MM" if big_endian else b"II") + struct.pack(o + "HI", 42, 8 + 16)
    path.write_bytes(head + bytes(16) + ifd)
    return path


def test_tiff_header_sizes_match_what_opencv_decodes(tmp_path):
    rng = np.random.default_rng(1)
    img = rng.integers(0, 255, (77, 301, 3), dtype=np.uint8)
    cases = {
        "a.tif": (img, []),
        "b.tiff": (img[..., 0], []),
        "c.tif": (img, [cv2.IMWRITE_TIFF_COMPRESSION, 1]),
        "d.tif": (img.astype(np.uint16) * 257, []),
    }
    for name, (data, params) in cases.items():
        assert cv2.imwrite(str(tmp_path / name), data, params)
    small = tiff_claiming(tmp_path / "e.tif", 40, 30)
    small.write_bytes(small.read_bytes() + bytes(40 * 30))
    moto = tiff_claiming(tmp_path / "f.tif", 33, 21, big_endian=True)
    moto.write_bytes(moto.read_bytes() + bytes(33 * 21))
    for p in sorted(tmp_path.iterdir()):
        decoded = cv2.imread(str(p), cv2.IMREAD_UNCHANGED)
        assert decoded is not None, p.name
        assert image_size(p) == (decoded.shape[1], decoded.shape[0]), p.name
    assert image_size(tiff_claiming(tmp_path / "big.tif", 30000, 20000)) == (30000, 20000)
    (tmp_path / "cut.tif").write_bytes((tmp_path / "big.tif").read_bytes()[:30])  # directory cut short
    (tmp_path / "odd.tif").write_bytes(b"II\x2b\x00" + bytes(28))  # BigTIFF magic, no directory
    assert image_size(tmp_path / "cut.tif") is None and image_size(tmp_path / "odd.tif") is None


def bomb_in(name: str, where: str = ""):
    def setup(ws: Path) -> None:
        folder = ws / where if where else ws
        shutil.copy(setup.bomb, folder / name)

    return setup


BOMBS = [
    (infer, ["bomb.png", "-m", "m.onnx", "--json", "o.jsonl"], "20000x20000 = 400 MP", bomb_in("bomb.png")),
    (infer, ["imgs", "-m", "m.onnx", "--save-dir", "out"], "over the 100 MP limit", bomb_in("bomb.png", "imgs")),
    (
        infer,
        ["imgs", "-m", "m.onnx", "--json", "o.jsonl", "--max-pixels", "300000000"],
        "over the 300 MP limit",
        bomb_in("bomb.png", "imgs"),
    ),
    (export, ["check", "m.onnx", "-w", "m.pt", "--source", "bomb.png"], "over the 100 MP limit", bomb_in("bomb.png")),
    (export, ["quantize", "m.onnx", "--calib", "imgs"], "over the 100 MP limit", bomb_in("bomb.png", "imgs")),
    (
        export,
        ["onnx", "m.pt", "--imgsz", "128", "--source", "imgs"],
        "over the 100 MP limit",
        bomb_in("bomb.png", "imgs"),
    ),
    (infer, ["big.jpg", "-m", "m.onnx"], "60000x50000", lambda ws: jpeg_claiming(ws / "big.jpg", 60000, 50000)),
    (infer, ["big.tif", "-m", "m.onnx"], "30000x20000", lambda ws: tiff_claiming(ws / "big.tif", 30000, 20000)),
    (infer, ["imgs", "-m", "m.onnx", "--max-pixels", "1000"], "over the 0.001 MP limit", None),
    (infer, ["imgs", "-m", "m.onnx", "--max-pixels", "0"], "--max-pixels 0", None),
]


@pytest.mark.parametrize("cli,args,match,setup", BOMBS, ids=[f"{i}-{' '.join(c[1][:3])}" for i, c in enumerate(BOMBS)])
def test_an_image_over_the_pixel_limit_is_refused_from_its_header(ws, bomb, cli, args, match, setup):
    if setup is not None:
        setup.bomb = bomb
        setup(ws)
    before = snapshot(ws)
    t0 = time.monotonic()
    result = cli(*args)
    assert time.monotonic() - t0 < 60
    assert_refused(result, before, ws, match, kind="pixel limit")


def test_the_limit_can_be_raised_and_set_by_environment(ws, monkeypatch):
    size = ws / "imgs" / "img0.jpg"
    w, h = image_size(size)
    assert w * h < MAX_PIXELS
    monkeypatch.setenv("CLO_EXPORT_MAX_PIXELS", str(w * h - 1))
    before = snapshot(ws)
    assert_refused(infer("imgs/img0.jpg", "-m", "m.onnx"), before, ws, "CLO_EXPORT_MAX_PIXELS", kind="pixel limit")
    result = infer("imgs/img0.jpg", "-m", "m.onnx", "-q", "--json", "o.jsonl", "--max-pixels", str(w * h))
    assert result.exit_code == 0, result.output
    monkeypatch.setenv("CLO_EXPORT_MAX_PIXELS", "many")
    assert_refused(
        infer("imgs/img0.jpg", "-m", "m.onnx"), snapshot(ws), ws, "CLO_EXPORT_MAX_PIXELS='many'", kind="pixel limit"
    )


# ---------------------------------------------------------------------------------------------- paths as they are


def test_an_existing_folder_named_like_a_webcam_is_a_folder(ws):
    shutil.copytree(ws / "imgs", ws / "2024")
    result = infer("2024", "-m", "m.onnx", "-q", "--json", "o.jsonl")
    assert result.exit_code == 0, result.output
    assert len((ws / "o.jsonl").read_text().splitlines()) == 3
    FAULTS["path kind"] += 1


def test_an_existing_name_with_glob_characters_is_taken_literally(ws):
    shutil.copy(ws / "imgs" / "img0.jpg", ws / "shot[1].jpg")
    result = infer("shot[1].jpg", "-m", "m.onnx", "-q", "--json", "o.jsonl")
    assert result.exit_code == 0, result.output
    assert '"shot[1].jpg"' in (ws / "o.jsonl").read_text() or "shot[1].jpg" in (ws / "o.jsonl").read_text()
    before = snapshot(ws)
    assert_refused(infer("shot[2].jpg", "-m", "m.onnx"), before, ws, "matches no file", kind="path kind")
    FAULTS["path kind"] += 1


# ---------------------------------------------------------------------------------------------- threads, memory


@pytest.mark.parametrize("option", ["--threads", "--workers"])
def test_threads_and_workers_are_bounded_by_the_cores(ws, option):
    from clo_export.backends.streams import usable_cores

    top = 4 * usable_cores()
    before = snapshot(ws)
    t0 = time.monotonic()
    assert_refused(
        infer("v.mp4", "-m", "m.onnx", option, "100000"),
        before,
        ws,
        f"{option} 100000 must be at most {top}",
        kind="threads",
    )
    assert_refused(
        infer("v.mp4", "-m", "m.onnx", option, str(top + 1)), before, ws, f"must be at most {top}", kind="threads"
    )
    assert time.monotonic() - t0 < 30


def _raised(fn) -> BaseException:
    try:
        fn()
    except Exception as e:  # the library's real exception, not a stand-in
        return e
    raise AssertionError("no error")


def ort_allocation_failure() -> None:
    import onnxruntime as ort

    value = helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
    node = helper.make_node("ConstantOfShape", ["s"], ["y"], value=value)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("s", TensorProto.INT64, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    sess.run(None, {"s": np.array([10**6, 10**7], np.int64)})  # 40 TB


def test_allocation_failures_become_one_line_with_the_size():
    import torch

    cases = {
        "PyTorch needed 9.1 TiB": lambda: torch.empty(10**13, dtype=torch.uint8),
        "OpenCV needed 111.8 GiB": lambda: cv2.resize(np.zeros((2, 2, 3), np.uint8), (200000, 200000)),
        "ONNX Runtime needed 36.4 TiB": ort_allocation_failure,
        "NumPy needed 728. TiB": lambda: np.empty((10**7, 10**7)),
    }
    for want, fn in cases.items():
        text = memory_error_text(_raised(fn))
        assert text is not None and want in text and "\n" not in text, text
    assert memory_error_text(ValueError("shapes do not match")) is None
    FAULTS["memory"] += len(cases)


def test_an_out_of_memory_decode_is_one_line(ws, bomb):
    """Under an address-space limit with the pixel limit raised, OpenCV's allocation failure is one line, exit 1."""
    import resource

    shutil.copy(bomb, ws / "bomb.png")
    before = snapshot(ws)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))

    args = [
        str(cli_path("clo-infer")),
        "bomb.png",
        "-m",
        "m.onnx",
        "-q",
        "--max-pixels",
        "500000000",
        "--workers",
        "1",
        "--threads",
        "1",
    ]
    proc = subprocess.run(
        args,
        cwd=ws,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=300,
        preexec_fn=limit,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert_refused(Ran(proc, 0), before, ws, "out of memory:", kind="memory")


# ---------------------------------------------------------------------------------------------- odd models, values


def foreign_onnx(path: Path, inputs: list, out_shape: list, names: str = "{0: 'a', 1: 'b', 2: 'c'}") -> None:
    """A small ONNX carrying YOLOv5 metadata (stride, names) but not fed or shaped like a YOLOv5 detector."""
    first = inputs[0][0]
    shape = helper.make_tensor("c", TensorProto.INT64, [len(out_shape)], out_shape)
    nodes = [helper.make_node("Constant", [], ["shape"], value=shape)]
    if len(inputs) > 1:
        nodes.append(helper.make_node("Add", [inputs[0][0], inputs[1][0]], ["sum"]))
        first = "sum"
    nodes += [helper.make_node("Reshape", [first, "shape"], ["output0"])]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (("stride", "32"), ("names", names)):
        prop = model.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.save(model, str(path))


def nhwc_model(ws: Path) -> None:
    foreign_onnx(ws / "f.onnx", [("images", [1, 128, 128, 3])], [1, -1, 8])


def two_inputs(ws: Path) -> None:
    foreign_onnx(ws / "f.onnx", [("images", [1, 3, 128, 128]), ("other", [1, 3, 128, 128])], [1, -1, 8])


def classifier(ws: Path) -> None:
    """A 224x224 classifier (1 x 1002 scores) carrying YOLOv5 metadata for 80 classes."""
    foreign_onnx(ws / "f.onnx", [("images", [1, 3, 224, 224])], [1, -1], str({i: f"c{i}" for i in range(80)}))


LAYOUT = "one input of layout 1x3xHxW (NCHW"

ODD = [
    (infer, ["v.mp4", "-m", "f.onnx", "--json", "o.jsonl"], "(channels last, NHWC)", nhwc_model),
    (infer, ["v.mp4", "-m", "f.onnx", "--json", "o.jsonl"], LAYOUT, nhwc_model),
    (export, ["check", "f.onnx", "-w", "m.pt", "--source", "v.mp4"], LAYOUT, nhwc_model),
    (export, ["trt", "f.onnx", "--dry-run"], "(channels last, NHWC)", nhwc_model),
    (export, ["trt", "f.onnx", "--dry-run"], "takes 2 inputs", two_inputs),
    (infer, ["v.mp4", "-m", "f.onnx", "--save", "o.mp4"], "takes 2 inputs ('images' 1x3x128x128", two_inputs),
    (export, ["check", "f.onnx", "-w", "m.pt", "--source", "v.mp4"], "takes 2 inputs", two_inputs),
    (
        infer,
        ["v.mp4", "-m", "f.onnx", "--json", "o.jsonl"],
        "no output of shape (batch, anchors, 5 + classes)",
        classifier,
    ),
    (infer, ["v.mp4", "-m", "m.onnx", "--classes", "²"], "--classes '²' is neither a class id", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--classes", "١"], "--classes '١' is neither a class id", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--classes", ","], "names no class", None),
    (infer, ["v.mp4", "-m", "m.onnx", "--classes", " , ,"], "names no class", None),
    (export, ["trt", "m.onnx", "--dry-run", "--workspace", "nan"], "--workspace nan must be a positive", None),
    (export, ["trt", "m.onnx", "--dry-run", "--workspace", "inf"], "--workspace inf must be a positive", None),
    (export, ["trt", "m.onnx", "--dry-run", "--target", "9.0"], "supports TensorRT 8.5, 8.6, 10.x and 11.x", None),
    (export, ["trt", "m.onnx", "--dry-run", "--target", "12"], "supports TensorRT 8.5, 8.6, 10.x and 11.x", None),
    (export, ["trt", "m.onnx", "--dry-run", "--target", "8.4.3"], "unknown --target '8.4.3'", None),
    (export, ["trt", "m.onnx", "--dry-run", "--target", "10.7.0rc"], "unknown --target", None),
    (infer, ["v.mp4", "-m", "triton://127.0.0.1:99999/x"], "port 99999 is out of range", None),
    (infer, ["v.mp4", "-m", "triton://127.0.0.1:0/x"], "port 0 is out of range", None),
    (export, ["triton", "m.onnx", "--name", ""], "--name '' is not a Triton model name", None),
    (export, ["triton", "m.onnx", "--model-version", "0"], "--model-version 0 must be 1 or more", None),
]


@pytest.mark.parametrize("cli,args,match,setup", ODD, ids=[f"{i}-{' '.join(c[1][-2:])}" for i, c in enumerate(ODD)])
def test_foreign_models_and_odd_values_are_one_line(ws, cli, args, match, setup):
    if setup is not None:
        setup(ws)
    assert_refused(cli(*args), snapshot(ws), ws, match, kind="odd value")


def test_a_supported_target_still_passes(ws):
    for target in ("8.5", "8.6.1", "10.7.0", "11.x"):
        result = export("trt", "m.onnx", "--dry-run", "--target", target)
        assert result.exit_code == 0 and "unknown --target" not in result.output, result.output


# ---------------------------------------------------------------------------------------------- environment


def test_printing_never_fails_on_an_ascii_terminal(ws):
    before = snapshot(ws)
    env = {"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"}
    args = [str(cli_path("clo-infer")), "v.mp4", "-m", "m.onnx", "-q", "--limit", "2", "--json", "ünï.jsonl"]
    ran = run_bounded(args, ws, env)
    assert ran.exit_code == 0 and "Traceback" not in ran.output, ran.output
    assert "wrote \\xfcn\\xef.jsonl" in ran.output
    assert len((ws / "ünï.jsonl").read_text().splitlines()) == 2
    (ws / "ünï.jsonl").unlink()
    ran = run_bounded([str(cli_path("clo-infer")), "nöpe.mp4", "-m", "m.onnx"], ws, env)
    assert_refused(ran, before, ws, "SOURCE 'n\\xf6pe.mp4' does not exist", kind="environment")


@pytest.mark.parametrize(
    "args",
    [
        ["clo-infer", "../v.mp4", "-m", "../m.onnx", "-q", "--json", "o.jsonl"],
        ["clo-export", "onnx", "../m.pt", "--imgsz", "128", "-o", "../x.onnx"],
        ["clo-export", "trt", "../m.onnx", "--dry-run"],
    ],
)
def test_a_deleted_working_folder_is_one_line(ws, args):
    before = snapshot(ws)
    script = 'cd gone && rmdir ../gone && exec "$@"'
    (ws / "gone").mkdir()
    ran = run_bounded(["sh", "-c", script, "sh", str(cli_path(args[0])), *args[1:]], ws)
    assert_refused(ran, before, ws, "the working folder no longer exists", kind="environment")


def test_sighup_mid_video_closes_the_outputs_like_ctrl_c(ws):
    from tests.helpers import make_video

    make_video(ws / "long.mp4", frames=LONG)
    before = snapshot(ws)
    proc, lines = start([str(cli_path("clo-infer")), "long.mp4", "-m", "m.onnx", "-q", "--json", "out.jsonl"], ws)
    wait_for(records_flowing(ws))
    proc.send_signal(signal.SIGHUP)
    assert proc.wait(60) == 130, "".join(lines)
    time.sleep(0.1)
    out = "".join(lines)
    assert "Traceback" not in out and "outputs closed and complete" in out
    after = snapshot(ws)
    assert {k: v for k, v in after.items() if k in before} == before
    assert set(after) - set(before) == {"out.jsonl"}
    FAULTS["signal"] += 1
