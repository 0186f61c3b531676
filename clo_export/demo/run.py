"""The demo chain as library steps: demo video and calibration set from the shapes generator,
then each artifact run through clo-infer's pipeline and scored against the video's ground truth.

Export, quantization, inference and scoring are the functions behind ``clo-export onnx``,
``clo-export quantize``, ``clo-infer`` and ``clo_export.metrics``; this module only feeds them, and
states the demo's targets (:func:`demo_targets`): a run that misses one has failed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from clo_export import __version__
from clo_export.backends.select import load_runners
from clo_export.data.readers import Frame, open_source
from clo_export.data.sinks import JsonlSink, MemorySink, VideoSink
from clo_export.demo.shapes import VIDEO_FPS, make_dataset, make_video_frames
from clo_export.errors import CloExportError
from clo_export.fileio import SIDECAR_MARKER, check_name_length, json_text, make_dirs, remove_dirs, write_text_atomic
from clo_export.metrics import evaluate
from clo_export.pipeline import Checker, InferOptions, Pipeline
from clo_export.quantization.quantize import QuantizeOptions

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "assets" / "demo-shapes.pt"
VIDEO_SIZE = (480, 640)  # (h, w)
VIDEO_SEED, CALIB_SEED = 4, 7  # video seed 4 shows all five classes
EVAL = InferOptions(conf=0.001, iou=0.6, max_det=300)  # val-style thresholds for mAP
MANIFEST = ".clo-export-demo.json"  # in --out: the files demos wrote there
# the names a demo writes: demo.mp4, demo.gt.json, demo-shapes.*, pytorch.*, onnx-*.*, trt-*.*, summary.json, calib/
DEMO_NAMES = re.compile(r"^(demo[.-][^/]*|pytorch\.[^/]*|onnx-[^/]*|trt-[^/]*|summary\.json|calib/.*)$")
MIN_FP32_F1 = 0.999  # FP32 ONNX detections vs PyTorch's at deployment thresholds
INT8_MAX_DROP = QuantizeOptions().target_drop  # points of mAP against the video's labels: the quantizer's own target


@dataclass(frozen=True)
class ArtifactRow:
    """One line of the demo's summary table."""

    name: str
    backend: str
    precision: str
    map50: float  # YOLOv5 val.py's definition
    map50_95: float
    coco_map50: float  # COCO's (pycocotools') definition, on the same detections
    coco_map50_95: float
    agreement_f1: float | None  # detection F1 against PyTorch; None for PyTorch itself
    fps: float
    video: Path
    jsonl: Path


@dataclass(frozen=True)
class Target:
    """One of the demo's targets, worded with this run's number, and whether the run met it."""

    text: str
    met: bool


def demo_targets(rows: list[ArtifactRow], parity=None) -> list[Target]:
    """The demo's targets for this run (``parity``: the export's ONNX-vs-PyTorch Report); a miss fails the demo."""
    by = {r.name: r for r in rows}
    out = []
    if parity is not None:
        why = "; ".join(parity.failures)
        out.append(
            Target(
                f"FP32 ONNX parity with PyTorch on {parity.n_inputs} inputs within the measured tolerance"
                + (f" ({why})" if why else ""),
                bool(parity),
            )
        )
    if "onnx-fp32" in by:
        f1 = by["onnx-fp32"].agreement_f1
        f1 = f1 or 0.0
        out.append(Target(f"FP32 ONNX detection F1 vs PyTorch {f1:.4f} >= {MIN_FP32_F1}", f1 >= MIN_FP32_F1))
    if "onnx-fp32" in by and "onnx-int8" in by:
        for label, key in (("mAP@.5:.95", "map50_95"), ("mAP@.5", "map50")):
            gap = (getattr(by["onnx-fp32"], key) - getattr(by["onnx-int8"], key)) * 100
            out.append(
                Target(
                    f"INT8 {label} (YOLOv5 val.py definition) within {INT8_MAX_DROP} points of FP32 "
                    f"(drop {gap:+.2f} points)",
                    gap <= INT8_MAX_DROP,
                )
            )
    return out


def write_video(path: Path, images: Iterable[np.ndarray]) -> None:
    """Write 640x480 BGR frames to ``path`` at VIDEO_FPS with the demo's writer (VideoSink: H.264 where PyAV has
    libx264), as ``demo.mp4`` is written."""
    h, w = VIDEO_SIZE
    sink = VideoSink(path, VIDEO_FPS, (w, h))
    try:
        for i, img in enumerate(images):
            sink.write(Frame(i, i / VIDEO_FPS, img, str(path)), np.zeros((0, 6), np.float32), None)
    except BaseException:
        sink.abort()
        raise
    sink.close()


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame of the video ``path``, decoded as the demo (clo-infer's source) decodes it."""
    return [frame.image for frame in open_source(path).frames()]


def write_demo_video(path: Path, n_frames: int, seed: int = VIDEO_SEED) -> list[np.ndarray]:
    """Render the demo video (moving, occluding shapes; another ``seed``: another video) and its ground truth;
    returns per-frame GT rows."""
    gt = []

    def images() -> Iterator[np.ndarray]:
        for frame in make_video_frames(seed, n_frames, VIDEO_SIZE):
            gt.append(frame.boxes)
            yield frame.image

    write_video(path, images())
    write_text_atomic(path.with_suffix(".gt.json"), json_text([g.tolist() for g in gt]))
    return gt


def write_calibration_set(folder: Path, n: int) -> Path:
    """``n`` still scenes from the same generator (another seed) as JPEG files."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, (img, _) in enumerate(make_dataset(CALIB_SEED, n, VIDEO_SIZE)):
        cv2.imwrite(str(folder / f"calib_{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return folder


def write_decoded_frames(folder: Path, images: Iterable[np.ndarray], prefix: str = "calib") -> list[Path]:
    """Pass ``images`` through the demo's video writer and save the decoded frames in ``folder`` as PNG (lossless:
    the deployment codec's artefacts and no other); the video itself is not kept."""
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent) as tmp:
        video = Path(tmp) / "frames.mp4"
        write_video(video, images)
        frames = read_video(video)
    paths = [folder / f"{prefix}_{i:04d}.png" for i in range(len(frames))]
    for path, img in zip(paths, frames):
        cv2.imwrite(str(path), img)
    return paths


def run_artifact(
    name: str, model: Path, video: Path, gt: list[np.ndarray], out: Path, reference=None, check_every: int = 10
) -> ArtifactRow:
    """Deployment pass (default thresholds: annotated video, JSONL, FPS, check against ``reference``), then an
    evaluation pass at val thresholds for mAP against the ground truth."""
    runners, info = load_runners(model, device="cpu")  # clo-infer's inference streams
    deploy = InferOptions(check_every=check_every)
    video_out, jsonl_out = out / f"{name}.mp4", out / f"{name}.jsonl"
    with ExitStack() as stack:
        for runner in runners:
            stack.enter_context(runner)
        checker = None
        if reference is not None:
            reference.activate()
            checker = Checker(reference, info, deploy)
        src = open_source(video)
        sinks = [VideoSink(video_out, src.fps or VIDEO_FPS, src.size), JsonlSink(jsonl_out, info.names)]
        result = Pipeline(src, runners, info, sinks, deploy, checker).run()
        memory = MemorySink()
        Pipeline(open_source(video), runners, info, [memory], EVAL).run()
    dets = [memory.detections.get(i, np.zeros((0, 6), np.float32)) for i in range(len(gt))]
    scores, coco = evaluate(dets, gt, definition="yolov5"), evaluate(dets, gt, definition="coco")
    f1 = result.check.detections.f1 if result.check is not None and result.check.detections is not None else None
    return ArtifactRow(
        name,
        info.backend,
        info.precision or "fp32",
        scores.map50,
        scores.map50_95,
        coco.map50,
        coco.map50_95,
        f1,
        result.fps,
        video_out,
        jsonl_out,
    )


def _tree(out: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``out`` (relative, '/'-separated) with its (inode, mtime): what 'unchanged' means."""
    files = {}
    for dirpath, _, names in os.walk(out):
        for n in names:
            p = Path(dirpath) / n
            with contextlib.suppress(OSError):
                st = p.lstat()
                files[p.relative_to(out).as_posix()] = (st.st_ino, st.st_mtime_ns)
    return files


def _json(path: Path) -> dict:
    """The JSON object in ``path``; empty when it is missing, unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def demo_manifest(out: Path) -> set[str]:
    """The files earlier demos wrote in ``out`` (a finished demo from before the manifest: every file at its names)."""
    manifest = _json(out / MANIFEST)
    files = manifest.get("files") if SIDECAR_MARKER in manifest else None
    if files is None and {"rows", "targets"} <= set(_json(out / "summary.json")):
        return {f for f in _tree(out) if DEMO_NAMES.match(f)}
    return {f for f in files if isinstance(f, str)} if isinstance(files, list) else set()


def check_demo_folder(out: Path, overwrite: bool) -> None:
    """Refuse a ``--out`` folder holding files no demo wrote (``overwrite``: allowed, never at a demo's own names)."""
    if not out.is_dir():
        return
    ours = demo_manifest(out) | {MANIFEST}
    theirs = sorted(f for f in _tree(out) if f not in ours)
    clash = [f for f in theirs if DEMO_NAMES.match(f)]
    if clash:
        raise CloExportError(
            f"--out '{out}' holds {_listed(clash)}, not written by a demo, at the demo's own names; "
            "move them away or choose another --out"
        )
    if theirs and not overwrite:
        raise CloExportError(
            f"--out '{out}' holds {_listed(theirs)}, not written by a demo; choose an empty or new "
            "--out folder, or pass --overwrite to write beside them (they are kept)"
        )


def _listed(names: list[str]) -> str:
    """The first three names, and how many more."""
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


@contextlib.contextmanager
def demo_folder(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Check ``out`` (:func:`check_demo_folder`), make it, and on any failure or interrupt remove every file the run
    wrote or changed there (and the folders it made); on success record its files in the manifest."""
    check_name_length("--out", out)
    check_demo_folder(out, overwrite)
    created = make_dirs(out)
    before = _tree(out)
    folders = {d for d, _, _ in os.walk(out)}
    try:
        yield out
    except BaseException:
        for rel, ident in _tree(out).items():
            if before.get(rel) != ident:
                with contextlib.suppress(OSError):
                    (out / rel).unlink()
        for d in sorted({d for d, _, _ in os.walk(out)} - folders, reverse=True):  # deepest first: folders it made
            with contextlib.suppress(OSError):
                os.rmdir(d)
        remove_dirs(created)
        raise
    files = demo_manifest(out) | {rel for rel, ident in _tree(out).items() if before.get(rel) != ident}
    write_text_atomic(out / MANIFEST, json_text({SIDECAR_MARKER: __version__, "files": sorted(files - {MANIFEST})}))
