"""Measure FP32 ONNX-vs-PyTorch differences on real frames: the evidence behind the FP32 parity rule.

Run: .venv/bin/python bench/parity_tolerance.py [--frames 1000] [--seed-frames 1000] [--json out.json]

Frames: the demo video (clo_export.demo.shapes, 640x480, seed 4) and still scenes from the
calibration generator (seed 7), each JPEG-encoded and decoded as a camera stream would deliver it,
then letterboxed by clo-export's one preprocessing function. Models and exports:

- the bundled demo model at 256, batch 1 and a dynamic batch (fed 8 frames a run);
- the seed model (nc=80) with randomised BatchNorm at 640, batch 1 and a dynamic batch (fed 4);
- the seed model exported rectangular, 512x640 (h x w), batch 1.

Each ONNX (clo-export's export, run by ONNX Runtime on CPU) is compared with both PyTorch references
clo-export uses: the fused export-mode model (`clo-export onnx` parity) and the unfused checkpoint
model (`clo-export check`, `clo-infer --check`). Per run and reference the table gives the largest
difference of box centres and sizes (sizes also relative to their value), objectness and class
scores, the largest share of its FP32 limit (clo_export.compare) any frame used, and how many frames
fail that limit (must be 0).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clo_export.backends.onnxrt import OnnxRuntimeRunner  # noqa: E402
from clo_export.compare import DETECTION_OUTPUT, TOLERANCES, Report, detection_stats  # noqa: E402
from clo_export.data.preprocess import preprocess_batch  # noqa: E402
from clo_export.demo.run import BUNDLED_MODEL  # noqa: E402
from clo_export.demo.shapes import make_dataset, make_video_frames  # noqa: E402
from clo_export.export.exporter import ExportOptions, export_onnx  # noqa: E402
from clo_export.models.checkpoint import LoadedModel, load  # noqa: E402
from clo_export.models.yolo import DEFAULT_CFG, DetectionModel  # noqa: E402
from clo_export.blocks import load_plugins  # noqa: E402
from tests.conftest import randomize  # noqa: E402


def real_frames(n: int) -> list[np.ndarray]:
    """``n`` BGR frames: half the demo video, half still scenes, each through a JPEG round trip."""
    frames = [f.image for f in make_video_frames(4, n // 2, (480, 640))]
    frames += [img for img, _ in make_dataset(7, n - len(frames), (480, 640))]
    return [cv2.imdecode(cv2.imencode(".jpg", f, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR) for f in frames]


def seed_model_random_bn(seed: int = 0) -> DetectionModel:
    """The seed architecture (nc=80) with non-trivial BatchNorm statistics, as the test fixtures make it."""
    torch.manual_seed(seed)
    return randomize(DetectionModel(DEFAULT_CFG), seed).eval()


STATS = ("box_abs", "xy_abs", "wh_abs", "wh_rel", "obj_abs", "cls_abs", "limit_used")


def field_stats(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    """Largest differences of one decoded output: boxes (all, centres, sizes, sizes relative), objectness, classes."""
    d = np.abs(ref.astype(np.float64) - test.astype(np.float64))
    return {
        "box_abs": float(d[..., :4].max()),
        "xy_abs": float(d[..., :2].max()),
        "wh_abs": float(d[..., 2:4].max()),
        "wh_rel": float((d[..., 2:4] / np.maximum(np.abs(ref[..., 2:4]), 1.0)).max()),
        "obj_abs": float(d[..., 4].max()),
        "cls_abs": float(d[..., 5:].max()),
    }


def limit_used(report: Report) -> float:
    """The largest fraction of its limit any field of a frame used (1.0 = at the limit)."""
    tol, used = report.tolerance, []
    for name, s in report.tensors.items():
        limit = tol.limit_for(name)
        if limit:
            used.append((s.max_excess if tol.rtol_for(name) is not None else s.max_abs) / limit)
    return max(used, default=0.0)


def measure(name: str, loaded: LoadedModel, frames: list[np.ndarray], imgsz: tuple[int, int], batch: int,
            dynamic: bool, tmp: Path) -> dict:
    """Export, then run every frame through ORT and both PyTorch references; worst-case statistics."""
    result = export_onnx(loaded, tmp / f"{name}.onnx", ExportOptions(imgsz=imgsz, dynamic_batch=dynamic))
    per_frame = {"fused": {k: [] for k in STATS}, "unfused": {k: [] for k in STATS}}
    fails = {"fused": 0, "unfused": 0}
    t0, tol = time.perf_counter(), TOLERANCES["fp32"]
    with OnnxRuntimeRunner(result.path, providers=["CPUExecutionProvider"]) as ort, torch.no_grad():
        chunk = max(batch, 8)  # PyTorch runs 8 frames at a time; ONNX Runtime at the export's batch
        for k in range(0, len(frames), chunk):
            x = preprocess_batch(frames[k:k + chunk], imgsz)[0]
            test = np.concatenate([ort.infer({"images": x[j:j + batch]})[DETECTION_OUTPUT] for j in range(0, len(x), batch)])
            step = len(x) if dynamic else batch  # the export-mode reference has the export's static shapes
            fused = np.concatenate([result.reference(torch.from_numpy(x[j:j + step])).numpy() for j in range(0, len(x), step)])
            refs = {"fused": fused, "unfused": loaded.model(torch.from_numpy(x)).numpy()}
            for which, ref in refs.items():
                for i in range(len(x)):  # one frame at a time, as a Report is judged per input
                    for f, v in field_stats(ref[i:i + 1], test[i:i + 1]).items():
                        per_frame[which][f].append(v)
                    # the FP32 rule's tensor limits (detection F1 needs NMS per frame: `clo-export check` does that)
                    report = Report("fp32", tol, tensors=detection_stats(ref[i:i + 1], test[i:i + 1], tol))
                    fails[which] += not report
                    per_frame[which]["limit_used"].append(limit_used(report))
    worst = {w: {f: max(v) for f, v in stats.items()} for w, stats in per_frame.items()}
    p999 = {w: {f: float(np.quantile(v, 0.999)) for f, v in stats.items()} for w, stats in per_frame.items()}
    return {"name": name, "imgsz": list(imgsz), "batch": batch, "dynamic_batch": dynamic, "frames": len(frames),
            "seconds": round(time.perf_counter() - t0, 1), "worst": worst, "p99.9": p999, "rule_failures": fails,
            "per_frame": per_frame}


def smallest_caught(demo_model, frames: list[np.ndarray]) -> list[tuple[str, float | None]]:
    """For each planted defect (tests/test_parity_tolerance.py), the smallest scanned size the FP32 rule fails."""
    import copy

    from tests.test_parity_tolerance import anchor_off, bn_eps, classes_swapped, grid_offset

    x = preprocess_batch(frames, (256, 256))[0]
    with torch.no_grad():
        ref = demo_model(torch.from_numpy(x)).numpy()

    def caught(plant, size) -> bool:
        with torch.no_grad():
            test = plant(copy.deepcopy(demo_model), size)(torch.from_numpy(x)).numpy()
        return not Report("fp32", TOLERANCES["fp32"], tensors=detection_stats(ref, test, TOLERANCES["fp32"]))

    scans = {"grid offset (px)": (grid_offset, [0.002, 0.005, 0.01, 0.02, 0.05]),
             "anchor off (relative)": (anchor_off, [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2]),
             "BatchNorm eps (1e-3 becomes)": (bn_eps, [9.9e-4, 9.5e-4, 9e-4, 5e-4, 1e-5])}
    out = [(name, next((v for v in sizes if caught(plant, v)), None)) for name, (plant, sizes) in scans.items()]
    swapped = sum(caught(lambda m, ab: classes_swapped(m, *ab), (a, b)) for a in range(5) for b in range(a + 1, 5))
    out.append(("two classes swapped (pairs caught of 10)", float(swapped)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000, help="frames per demo-model run")
    ap.add_argument("--seed-frames", type=int, default=1000, help="frames per seed-model run (640-size runs cost ~6x more)")
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--defects-only", action="store_true", help="only scan the smallest planted defects the rule catches")
    ap.add_argument("--runs", default=None, help="comma-separated run names to measure (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_plugins()
    frames = real_frames(args.frames)
    demo = load(BUNDLED_MODEL)
    console = Console(width=150)
    defects = Table(title="Smallest planted defect the FP32 rule fails (demo model, 256, 8 real frames)", title_justify="left")
    defects.add_column("defect")
    defects.add_column("smallest caught", justify="right")
    if not args.runs:
        for name, size in smallest_caught(demo.model, frames[:4] + frames[-4:]):
            defects.add_row(name, "not caught" if size is None else f"{size:g}")
        console.print(defects)
    if args.defects_only:
        return
    seed = LoadedModel(seed_model_random_bn(), Path("seed-random-bn.pt"), "in memory", "")
    n_seed = min(args.seed_frames, len(frames))
    runs = [("demo-256", demo, (256, 256), 1, False, frames), ("demo-256-dynamic", demo, (256, 256), 8, True, frames),
            ("seed-640", seed, (640, 640), 1, False, frames[:n_seed]), ("seed-512x640", seed, (512, 640), 1, False, frames[-n_seed:]),
            ("seed-640-dynamic", seed, (640, 640), 4, True, frames[:n_seed])]
    if args.runs:
        runs = [r for r in runs if r[0] in args.runs.split(",")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            name, loaded, imgsz, batch, dynamic, run_frames = run
            results.append(measure(name, loaded, run_frames, imgsz, batch, dynamic, Path(tmp)))
            console.print(f"{name}: {len(run_frames)} frames, {results[-1]['seconds']} s", markup=False)
            if args.json:  # after every run, so a long measurement keeps what it has
                args.json.write_text(json.dumps({"rule": TOLERANCES["fp32"].describe(), "runs": results}) + "\n")
    tol = TOLERANCES["fp32"]
    table = Table(title="FP32 ONNX Runtime vs PyTorch: largest difference over the real frames of each run",
                  caption=f"FP32 rule: {tol.describe()}", title_justify="left", caption_justify="left")
    for col in ("run", "frames", "reference", "xy px", "wh px", "wh relative", "objectness", "classes", "limit used", "frames failing"):
        table.add_column(col, justify="left" if col in ("run", "reference") else "right")
    for r in results:
        for which in ("fused", "unfused"):
            w = r["worst"][which]
            table.add_row(r["name"], str(r["frames"]), which, f"{w['xy_abs']:.2e}", f"{w['wh_abs']:.2e}", f"{w['wh_rel']:.2e}",
                          f"{w['obj_abs']:.2e}", f"{w['cls_abs']:.2e}", f"{w['limit_used']:.0%}", f"{r['rule_failures'][which]}/{r['frames']}")
    console.print(table)


if __name__ == "__main__":
    main()
