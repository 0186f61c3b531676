"""Calibration images from the deployment codec: does the default INT8 lose less on compressed video?

Run: PYTHONPATH=. .venv/bin/python bench/calib_domain.py [--eval-seeds 11 12 13 14 15] [--frames 300]
     [--sets jpeg h264-clip-7 h264-clip-21 h264-stills h264-clips-8] [--work DIR]

The demo scores frames decoded from its H.264 MP4, while its calibration set was JPEG stills; the
quantizer's decisions (range method, float sites) are made on the held-out part of the calibration
set, so they can only be as good as that set looks like the deployed frames. This bench quantizes
the bundled demo model with the default (``QuantizeOptions(num=256, holdout=128)``, automatic
precision, target 0.3 points) on calibration sets of the same size (384 images) that differ only in
where the images come from, and scores FP32 and each INT8 model against labels (YOLOv5 val.py's
definition, val thresholds) on K videos of other seeds, each written to MP4 by the demo's own
writer (``clo_export.demo.run.write_demo_video``: VideoSink, H.264) and decoded as the demo decodes
it. The demo video (seed 4) is never scored here. Sets (``--sets``):

- ``jpeg``: still scenes (``make_dataset(CALIB_SEED)``) as JPEG quality 95, the demo's calibration set
  (``jpeg-S``: scenes of seed S);
- ``h264-clip-S``: 384 frames of one video of seed S through the same H.264 writer, decoded, saved as PNG
  (lossless: the codec's artefacts and no other);
- ``h264-stills``: the ``jpeg`` set's scenes through the H.264 writer as one video, decoded, PNG (the codec
  without video content; ``h264-stills-S``: scenes of seed S);
- ``h264-clips-K``: K videos (seeds 101..100+K), 384/K frames each, each through the H.264 writer, PNG.

Models and their facts are kept in ``--work`` (default: a temporary folder); a rerun with the same
``--work`` reuses the models there and only scores, so sets can be added one run at a time.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import tempfile
import time
from pathlib import Path

import cv2
from quantize_accuracy import demo_fp32, score  # bench/: the benchmarks' one FP32 model and scoring function
from rich.console import Console
from rich.table import Table

from clo_export.demo.run import (
    CALIB_SEED,
    VIDEO_SEED,
    VIDEO_SIZE,
    read_video,
    write_decoded_frames,
    write_demo_video,
)
from clo_export.demo.shapes import make_dataset, make_video_frames
from clo_export.quantization.calibset import DEFAULT_HOLDOUT, DEFAULT_NUM
from clo_export.quantization.quantize import QuantizeOptions, quantize

N_CALIB = DEFAULT_NUM + DEFAULT_HOLDOUT  # 256 + 128, the demo's default
CLIPS_FIRST_SEED = 101
SET = re.compile(r"^((jpeg|h264-stills)(?:-(\d+))?|h264-clip-(\d+)|h264-clips-(\d+))$")


def calib_video_seeds(name: str) -> set[int]:
    """The video seeds a calibration set renders (an evaluation video must use none of them)."""
    m = SET.match(name)
    if m is None:
        raise SystemExit(f"unknown set {name}: jpeg[-SEED], h264-stills[-SEED], h264-clip-SEED or h264-clips-K")
    if m.group(4):
        return {int(m.group(4))}
    if m.group(5):
        return set(range(CLIPS_FIRST_SEED, CLIPS_FIRST_SEED + int(m.group(5))))
    return set()


def write_set(name: str, folder: Path) -> None:
    """Write the calibration set ``name`` (384 images) into ``folder``."""
    m = SET.match(name)
    stills = (img for img, _ in make_dataset(int(m.group(3) or CALIB_SEED), N_CALIB, VIDEO_SIZE))
    if m.group(2) == "jpeg":
        folder.mkdir(parents=True)
        for i, img in enumerate(stills):
            cv2.imwrite(str(folder / f"calib_{i:04d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, 95])
    elif m.group(2) == "h264-stills":
        write_decoded_frames(folder, stills)
    else:
        seeds = sorted(calib_video_seeds(name))
        per = -(-N_CALIB // len(seeds))
        for seed in seeds:
            write_decoded_frames(folder, (f.image for f in make_video_frames(seed, per, VIDEO_SIZE)), f"v{seed}")


def quantized(name: str, fp32: Path, work: Path, console: Console, min_int8_share: float) -> dict:
    """The default INT8 model of set ``name`` and its facts (made once per --work, then reused)."""
    facts_path = work / f"{name}.json"
    if facts_path.is_file():
        return json.loads(facts_path.read_text())
    folder = work / name
    if not folder.is_dir():
        write_set(name, folder)
    console.print(f"{name}: quantizing on {len(list(folder.iterdir()))} images …")
    t = time.perf_counter()
    opts = QuantizeOptions(num=DEFAULT_NUM, holdout=DEFAULT_HOLDOUT, min_agreement=0, min_int8_share=min_int8_share)
    r = quantize(fp32, folder, work / f"{name}.int8.onnx", opts)
    facts = {
        "model": str(r.path),
        "method": r.method,
        "float_sites": r.choice.float_sites if r.choice else [],
        "int8_share": r.int8_share,
        "heldout_drop50_95": r.report.int8.drop50_95 if r.report.int8 else None,
        "seconds": time.perf_counter() - t,
    }
    facts_path.write_text(json.dumps(facts, indent=1))
    console.print(f"{name}: {facts['seconds']:.0f} s, method {r.method}, {len(facts['float_sites'])} float sites")
    return facts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eval-seeds", type=int, nargs="+", default=[11, 12, 13, 14, 15])
    ap.add_argument("--frames", type=int, default=300, help="frames per evaluation video")
    ap.add_argument("--sets", nargs="+", default=["jpeg", "h264-clip-7", "h264-clip-21"])
    ap.add_argument(
        "--min-int8-share",
        type=float,
        default=QuantizeOptions().min_int8_share,
        help="the quantizer's INT8 MAC floor (default: its own; use a fresh --work, models there are reused)",
    )
    ap.add_argument("--work", type=Path, help="keep sets and models here and reuse them (default: a temporary folder)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    console = Console(width=160)
    used = {s for name in args.sets for s in calib_video_seeds(name)}
    bad = sorted(set(args.eval_seeds) & (used | {VIDEO_SEED}))
    if bad:
        raise SystemExit(f"evaluation seeds {bad} are the demo video's or a calibration video's")
    work = args.work or Path(tempfile.mkdtemp(prefix="clo-calib-domain-"))
    fp32, imgsz = demo_fp32(work)
    facts = {name: quantized(name, fp32, work, console, args.min_int8_share) for name in args.sets}

    table = Table(
        title=f"Default INT8 (256 + 128 held out) by calibration source: mAP drop from FP32 in points on H.264 videos "
        f"({args.frames} frames each, decoded as the demo decodes; YOLOv5 val.py mAP)",
        title_justify="left",
    )
    table.add_column("video seed")
    for col in ("FP32 mAP@.5", "FP32 mAP@.5:.95", *(f"{n} Δ@.5:.95 (Δ@.5)" for n in args.sets)):
        table.add_column(col, justify="right")
    drops: dict[str, list[tuple[float, float]]] = {n: [] for n in args.sets}
    for seed in args.eval_seeds:
        video = work / f"eval-{seed}.mp4"
        gts = write_demo_video(video, args.frames, seed)
        images = read_video(video)
        base = score(fp32, images, gts[: len(images)], imgsz)
        cells = []
        for name in args.sets:
            s = score(Path(facts[name]["model"]), images, gts[: len(images)], imgsz)
            d = (100 * (base[1] - s[1]), 100 * (base[0] - s[0]))
            drops[name].append(d)
            cells.append(f"{d[0]:+.2f} ({d[1]:+.2f})")
        table.add_row(str(seed), f"{base[0]:.4f}", f"{base[1]:.4f}", *cells)
    table.add_section()
    table.add_row("mean", "", "", *(f"{_mean(drops[n], 0):+.2f} ({_mean(drops[n], 1):+.2f})" for n in args.sets))
    table.add_row("worst", "", "", *(f"{max(d[0] for d in drops[n]):+.2f}" for n in args.sets))
    console.print(table)

    models = Table(title="The quantized models", title_justify="left")
    for col in ("set", "method", "float sites", "INT8 conv MACs", "held-out drop", "quantize s"):
        models.add_column(col, justify="left" if col in ("set", "float sites") else "right")
    for name in args.sets:
        f = facts[name]
        held = f["heldout_drop50_95"]
        models.add_row(
            name,
            f["method"],
            f"{len(f['float_sites'])}: {', '.join(f['float_sites'])}",
            f"{100 * f['int8_share']:.1f} %",
            "" if held is None else f"{held:+.2f}",
            f"{f['seconds']:.0f}",
        )
    console.print(models)
    console.print(f"sets and models in {work}")


def _mean(pairs: list[tuple[float, float]], k: int) -> float:
    return sum(p[k] for p in pairs) / len(pairs)


if __name__ == "__main__":
    main()
