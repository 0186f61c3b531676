"""Benchmark `clo-export quantize` on the seed model: calibration time per image, ORT CPU latency FP32 vs INT8.

Run: .venv/bin/python bench/quantize.py [--weights best.pt] [--imgsz 640] [--num 32] [--runs 20]
Without --weights the seed config (nc=80) is built untrained: latency and calibration time do not
depend on the weights (the agreement numbers printed then say little; see the README).
FP32 and INT8 are timed in one run, interleaved, on the same ONNX Runtime CPU build and threads.
On x86 CPUs ONNX Runtime often runs a Q/DQ model *slower* than FP32 (the DQ nodes are executed,
not all fused); the Q/DQ model is made for TensorRT, and on the CPU it is the accuracy simulator.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from rich.console import Console
from rich.table import Table

from clo_export.backends.onnxrt import OnnxRuntimeRunner
from clo_export.export.exporter import ExportOptions, export_onnx
from clo_export.quantization.quantize import QuantizeOptions, quantize


def calibration_images(folder: Path, n: int, size: int) -> None:
    """Shapes scenes from clo_export.demo.shapes when present, else drawn circles on noise."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    try:
        from clo_export.demo.shapes import render_scene
    except ImportError:
        render_scene = None
    for i in range(n):
        if render_scene is not None:
            img = render_scene(rng, (size, size))[0]
        else:
            img = (rng.random((size, size, 3)) * 255).astype(np.uint8)
            cv2.circle(img, (size // 2, size // 2), size // 5, (0, 200, 255), -1)
        cv2.imwrite(str(folder / f"{i:04d}.jpg"), img)


def latency(paths: dict[str, Path], imgsz: int, runs: int, threads: int | None) -> dict[str, float]:
    """Median ms per model, measured interleaved after warm-up."""
    x = {"images": np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)}
    runners = {
        k: OnnxRuntimeRunner(p, providers=["CPUExecutionProvider"], threads=threads).activate()
        for k, p in paths.items()
    }
    times: dict[str, list[float]] = {k: [] for k in paths}
    for r in runners.values():
        r.infer(x), r.infer(x)
    for _ in range(runs):
        for k, r in runners.items():
            t = time.perf_counter()
            r.infer(x)
            times[k].append((time.perf_counter() - t) * 1e3)
    for r in runners.values():
        r.deactivate()
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--num", type=int, default=32, help="calibration images (held-out: 8 more)")
    ap.add_argument("--method", default="entropy")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from clo_export.blocks import load_plugins
    from clo_export.models.checkpoint import load, save_yolov5
    from clo_export.models.yolo import DetectionModel

    load_plugins()
    console = Console(width=120)
    tmp = Path(tempfile.mkdtemp())
    weights = args.weights or save_yolov5(DetectionModel().eval(), tmp / "seed.pt")
    fp32 = export_onnx(load(weights), tmp / "seed.onnx", ExportOptions(imgsz=(args.imgsz, args.imgsz))).path
    calibration_images(tmp / "calib", args.num + 8, args.imgsz)

    rows = []
    paths = {"FP32": fp32}
    for keep in (True, False):
        opts = QuantizeOptions(
            method=args.method,
            num=args.num,
            holdout=8,
            min_holdout=8,
            min_agreement=0,  # a speed benchmark of an untrained model: accept any accuracy
            keep_attention_fp=keep,
            min_images=min(16, args.num),
            threads=args.threads,
            cache=tmp / f"cache-{keep}.json",
        )
        r = quantize(fp32, tmp / "calib", tmp / f"seed.int8.{'attnfp' if keep else 'all'}.onnx", opts)
        label = "INT8 Q/DQ (attention FP32)" if keep else "INT8 Q/DQ (attention INT8)"
        paths[label] = r.path
        rows.append((label, r, r.seconds["calibrate"] / len(r.split.calib)))
    ms = latency(paths, args.imgsz, args.runs, args.threads)

    who = f"{weights.name}" if args.weights else "seed config, untrained (nc=80)"
    table = Table(
        title=f"quantize {who} at {args.imgsz}, ONNX Runtime CPU, {args.runs} runs, median", title_justify="left"
    )
    for col in ("model", "latency ms", "vs FP32", "calib s/img", "agreement F1", "mAP@0.5 vs FP32"):
        table.add_column(col, justify="left" if col == "model" else "right")
    table.add_row("FP32", f"{ms['FP32']:.1f}", "1.00x", "", "", "")
    for label, r, per_img in rows:
        rep = r.report
        table.add_row(
            label,
            f"{ms[label]:.1f}",
            f"{ms[label] / ms['FP32']:.2f}x",
            f"{per_img:.3f}",
            f"{rep.score:.3f} ({rep.agreement.n_ref} boxes)",
            "–" if rep.map50 is None else f"{rep.map50:.3f}",
        )
    console.print(table)
    console.print(
        f"calibration: {args.num} images, method {args.method} (inference + histograms + range search); "
        "latency ratio > 1 means INT8 is slower on this CPU (expected for Q/DQ in ONNX Runtime)"
    )


if __name__ == "__main__":
    main()
