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
scores, the largest share of its FP32 limit (clo_export.report) any frame used, and how many frames
fail that limit (must be 0).

With ``--fp16`` it measures the FP16 rule instead: each model's ``--half`` ONNX (ONNX Runtime, CPU) against
the fused FP32 PyTorch reference, at 256 and 640, on the real frames plus uniform-noise inputs (what
``clo-export onnx`` compares when given no frames). Boxes and class scores are judged only where the
reference's objectness reaches the rule's floor (rows that can become a detection at any threshold YOLOv5
uses); objectness on every row. It then plants each #13 defect in the model, exports it FP16, and shows
whether the FP16 rule catches it.
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
from clo_export.blocks import load_plugins  # noqa: E402
from clo_export.data.preprocess import preprocess_batch  # noqa: E402
from clo_export.demo.run import BUNDLED_MODEL  # noqa: E402
from clo_export.demo.shapes import make_dataset, make_video_frames  # noqa: E402
from clo_export.export.exporter import ExportOptions, export_onnx  # noqa: E402
from clo_export.models.checkpoint import LoadedModel, load  # noqa: E402
from clo_export.models.yolo import DEFAULT_CFG, DetectionModel  # noqa: E402
from clo_export.postprocess import nms  # noqa: E402
from clo_export.report import DETECTION_OUTPUT, TOLERANCES, Report, detection_agreement, detection_stats  # noqa: E402
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


def measure(
    name: str,
    loaded: LoadedModel,
    frames: list[np.ndarray],
    imgsz: tuple[int, int],
    batch: int,
    dynamic: bool,
    tmp: Path,
) -> dict:
    """Export, then run every frame through ORT and both PyTorch references; worst-case statistics."""
    result = export_onnx(loaded, tmp / f"{name}.onnx", ExportOptions(imgsz=imgsz, dynamic_batch=dynamic))
    per_frame = {"fused": {k: [] for k in STATS}, "unfused": {k: [] for k in STATS}}
    fails = {"fused": 0, "unfused": 0}
    t0, tol = time.perf_counter(), TOLERANCES["fp32"]
    with OnnxRuntimeRunner(result.path, providers=["CPUExecutionProvider"]) as ort, torch.no_grad():
        chunk = max(batch, 8)  # PyTorch runs 8 frames at a time; ONNX Runtime at the export's batch
        for k in range(0, len(frames), chunk):
            x = preprocess_batch(frames[k : k + chunk], imgsz)[0]
            test = np.concatenate(
                [ort.infer({"images": x[j : j + batch]})[DETECTION_OUTPUT] for j in range(0, len(x), batch)]
            )
            step = len(x) if dynamic else batch  # the export-mode reference has the export's static shapes
            fused = np.concatenate(
                [result.reference(torch.from_numpy(x[j : j + step])).numpy() for j in range(0, len(x), step)]
            )
            refs = {"fused": fused, "unfused": loaded.model(torch.from_numpy(x)).numpy()}
            for which, ref in refs.items():
                for i in range(len(x)):  # one frame at a time, as a Report is judged per input
                    for f, v in field_stats(ref[i : i + 1], test[i : i + 1]).items():
                        per_frame[which][f].append(v)
                    # the FP32 rule's tensor limits (detection F1 needs NMS per frame: `clo-export check` does that)
                    report = Report("fp32", tol, tensors=detection_stats(ref[i : i + 1], test[i : i + 1], tol))
                    fails[which] += not report
                    per_frame[which]["limit_used"].append(limit_used(report))
    worst = {w: {f: max(v) for f, v in stats.items()} for w, stats in per_frame.items()}
    p999 = {w: {f: float(np.quantile(v, 0.999)) for f, v in stats.items()} for w, stats in per_frame.items()}
    return {
        "name": name,
        "imgsz": list(imgsz),
        "batch": batch,
        "dynamic_batch": dynamic,
        "frames": len(frames),
        "seconds": round(time.perf_counter() - t0, 1),
        "worst": worst,
        "p99.9": p999,
        "rule_failures": fails,
        "per_frame": per_frame,
    }


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

    scans = {
        "grid offset (px)": (grid_offset, [0.002, 0.005, 0.01, 0.02, 0.05]),
        "anchor off (relative)": (anchor_off, [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2]),
        "BatchNorm eps (1e-3 becomes)": (bn_eps, [9.9e-4, 9.5e-4, 9e-4, 5e-4, 1e-5]),
    }
    out = [(name, next((v for v in sizes if caught(plant, v)), None)) for name, (plant, sizes) in scans.items()]
    swapped = sum(caught(lambda m, ab: classes_swapped(m, *ab), (a, b)) for a in range(5) for b in range(a + 1, 5))
    out.append(("two classes swapped (pairs caught of 10)", float(swapped)))
    return out


FP16_FLOOR = 1e-3  # YOLOv5's lowest confidence threshold (val's conf_thres): rows below it never become a detection
FP16_RTOLS = (1e-3, 2e-3, 3e-3, 5e-3, 7e-3)  # candidate relative parts of the box limit; each one's excess is kept
FP16_STATS = (
    "rows",
    "box_abs_all",
    "cls_abs_all",
    "xy_abs",
    "wh_abs",
    "wh_rel",
    "obj_abs",
    "cls_abs",
    *(f"excess@{r:g}" for r in FP16_RTOLS),
)


def fp16_field_stats(ref: np.ndarray, test: np.ndarray, floor: float = FP16_FLOOR) -> dict[str, float]:
    """One frame's FP16 differences: every row, and the rows whose reference objectness reaches ``floor``."""
    d = np.abs(ref.astype(np.float64) - test.astype(np.float64))
    rows = ref[..., 4] >= floor
    ds, vs = d[rows], np.abs(ref[rows].astype(np.float64))
    out = {
        "rows": float(rows.sum()),
        "box_abs_all": float(d[..., :4].max()),
        "cls_abs_all": float(d[..., 5:].max()),
        "obj_abs": float(d[..., 4].max()),
    }
    if not len(ds):
        return {**out, **{k: 0.0 for k in FP16_STATS if k not in out}}
    out.update(
        xy_abs=float(ds[:, :2].max()),
        wh_abs=float(ds[:, 2:4].max()),
        wh_rel=float((ds[:, 2:4] / np.maximum(vs[:, 2:4], 1.0)).max()),
        cls_abs=float(ds[:, 5:].max()),
    )
    out.update({f"excess@{r:g}": float((ds[:, :4] - r * vs[:, :4]).max()) for r in FP16_RTOLS})
    return out


def measure_fp16(
    name: str, loaded: LoadedModel, frames: list[np.ndarray], imgsz: tuple[int, int], n_noise: int, tmp: Path
) -> dict:
    """Export ``--half``; every real frame and ``n_noise`` noise inputs through ORT and the FP32 reference."""
    result = export_onnx(loaded, tmp / f"{name}.fp16.onnx", ExportOptions(imgsz=imgsz, half=True))
    inputs = {
        "real": preprocess_batch(frames, imgsz)[0],
        "noise": np.random.default_rng(0).random((n_noise, 3, *imgsz), dtype=np.float32),
    }
    per = {which: {k: [] for k in FP16_STATS} for which in inputs}
    agree, t0 = {}, time.perf_counter()
    with OnnxRuntimeRunner(result.path, providers=["CPUExecutionProvider"]) as ort, torch.no_grad():
        for which, x in inputs.items():
            dets = []
            for i in range(len(x)):
                test = ort.infer({"images": x[i : i + 1]})[DETECTION_OUTPUT].astype(np.float32)
                ref = result.reference(torch.from_numpy(x[i : i + 1])).numpy()
                for k, v in fp16_field_stats(ref, test).items():
                    per[which][k].append(v)
                dets.append((nms(ref, 0.25, 0.45)[0], nms(test, 0.25, 0.45)[0]))
            agree[which] = detection_agreement([r for r, _ in dets], [t for _, t in dets]).__dict__
    return {
        "name": name,
        "imgsz": list(imgsz),
        "inputs": {w: len(x) for w, x in inputs.items()},
        "per_frame": per,
        "detections": agree,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def fp16_used(per: dict[str, list[float]], tol) -> np.ndarray:
    """Per frame, the largest fraction of its FP16 limit any field used (boxes: the excess over rtol x |value|)."""
    key = f"excess@{tol.box_rtol:g}"
    if key not in per:
        raise SystemExit(f"the FP16 rule's box_rtol {tol.box_rtol:g} is not among the measured {FP16_RTOLS}; rerun")
    return np.max(
        [
            np.array(per[key]) / tol.box_max_abs,
            np.array(per["obj_abs"]) / tol.obj_max_abs,
            np.array(per["cls_abs"]) / tol.cls_max_abs,
        ],
        axis=0,
    )


def fp16_defects(demo: LoadedModel, frames: list[np.ndarray], imgsz: tuple[int, int], tmp: Path) -> list[tuple]:
    """Each #13 defect planted in a copy of the demo model, exported FP16, judged by the FP16 rule against FP32."""
    import copy
    import dataclasses

    from tests.test_parity_tolerance import anchor_off, bn_eps, classes_swapped, grid_offset

    tol = TOLERANCES["fp16"]
    x = preprocess_batch(frames, imgsz)[0]
    plants = [
        ("none (correct export)", lambda m: m),
        ("grid offset 0.05 px", grid_offset),
        ("grid offset 2 px", lambda m: grid_offset(m, 2.0)),
        ("anchor 1% off", anchor_off),
        ("anchor 5% off", lambda m: anchor_off(m, 0.05)),
        ("BatchNorm eps 1e-5", bn_eps),
        ("two classes swapped", classes_swapped),
    ]
    reference = export_onnx(demo, tmp / "ref.onnx", ExportOptions(imgsz=imgsz, simplifier="none")).reference
    with torch.no_grad():
        ref = np.concatenate(
            [reference(torch.from_numpy(x[i : i + 1])).numpy() for i in range(len(x))]
        )  # static batch 1
    rows = []
    for label, plant in plants:
        bad = dataclasses.replace(demo, model=plant(copy.deepcopy(demo.model)))
        opts = ExportOptions(imgsz=imgsz, half=True, simplifier="none")  # the defect's math is the same unsimplified
        path = export_onnx(bad, tmp / "defect.fp16.onnx", opts).path
        with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]) as ort:
            test = np.concatenate([ort.infer({"images": x[i : i + 1]})[DETECTION_OUTPUT] for i in range(len(x))])
        test = test.astype(np.float32)
        report = Report.accumulate(
            Report("fp16", tol, tensors=detection_stats(ref[i : i + 1], test[i : i + 1], tol)) for i in range(len(x))
        )
        fields = sorted({f.split(":")[0] for f in report.failures})
        rows.append(
            (
                f"{imgsz[0]}",
                label,
                "passed" if report else "caught",
                ", ".join(fields) or "–",
                f"{limit_used(report):.0%}",
            )
        )
    return rows


def fp16_main(args: argparse.Namespace, demo: LoadedModel, console: Console) -> None:
    """The FP16 measurement (both models at 256 and 640) and the planted defects; or the tables of saved runs."""
    tol, results, defects = TOLERANCES["fp16"], [], []
    if args.table:
        for f in args.table:
            data = json.loads(f.read_text())
            results += data.get("runs", [])
            defects += [tuple(r) for r in data.get("defects", [])]
    else:
        seed = LoadedModel(seed_model_random_bn(), Path("seed-random-bn.pt"), "in memory", "")
        runs = [("demo-256", demo, 256), ("demo-640", demo, 640), ("seed-256", seed, 256), ("seed-640", seed, 640)]
        runs = [r for r in runs if (not args.runs or r[0] in args.runs.split(",")) and not args.defects_only]
        counts = {args.frames if size == 256 else args.seed_frames for _, _, size in runs}
        if not args.runs:
            counts.add(args.frames)  # the defects' frames
        frames = {n: real_frames(n) for n in counts}  # half video, half stills at each count
        with tempfile.TemporaryDirectory() as tmp:
            for name, loaded, size in runs:
                n = args.frames if size == 256 else args.seed_frames
                results.append(measure_fp16(name, loaded, frames[n], (size, size), args.noise, Path(tmp)))
                console.print(f"{name}: {n} frames + {args.noise} noise, {results[-1]['seconds']} s", markup=False)
                if args.json:  # after every run, so a long measurement keeps what it has
                    args.json.write_text(json.dumps({"rule": tol.describe(), "runs": results}) + "\n")
            if not args.runs:
                few = frames[args.frames][:4] + frames[args.frames][-4:]
                sizes = [int(v) for v in args.defect_sizes.split(",")]
                defects = [row for size in sizes for row in fp16_defects(demo, few, (size, size), Path(tmp))]
        if args.json:
            args.json.write_text(json.dumps({"rule": tol.describe(), "runs": results, "defects": defects}) + "\n")
    console.print(fp16_table(results, tol))
    if defects:
        dt = Table(
            title="Planted defects under the FP16 rule (demo model, 8 real frames, exported --half)",
            title_justify="left",
        )
        for col in ("size", "defect", "FP16 rule", "failing fields", "limit used"):
            dt.add_column(col)
        for row in defects:
            dt.add_row(*row)
        console.print(dt)


def fp16_table(results: list[dict], tol) -> Table:
    """Largest difference per field and run, and how much of the FP16 rule's limits the worst frame used."""
    table = Table(
        title="FP16 (--half ONNX, ONNX Runtime) vs FP32 PyTorch: largest difference per run",
        caption=f"FP16 rule: {tol.describe()}",
        title_justify="left",
        caption_justify="left",
    )
    cols = (
        "run",
        "inputs",
        f"rows obj>={FP16_FLOOR:g}",
        "boxes (all rows)",
        "xy px",
        "wh px",
        "wh rel",
        f"box excess @rtol {tol.box_rtol:g}",
        "objectness",
        "classes",
        "classes (all rows)",
        "limit used",
        "failing",
        "F1@0.25 (ref boxes)",
    )
    for col in cols:
        table.add_column(col, justify="left" if col in ("run", "inputs") else "right")
    for r in results:
        for which, per in r["per_frame"].items():
            n, used = r["inputs"][which], fp16_used(per, tol)
            w, det = {k: max(v) for k, v in per.items()}, r["detections"][which]
            table.add_row(
                r["name"],
                f"{n} {which}",
                f"{sum(per['rows']):.0f}",
                f"{w['box_abs_all']:.3g}",
                f"{w['xy_abs']:.3g}",
                f"{w['wh_abs']:.3g}",
                f"{w['wh_rel']:.2e}",
                f"{w[f'excess@{tol.box_rtol:g}']:.3g}",
                f"{w['obj_abs']:.2e}",
                f"{w['cls_abs']:.2e}",
                f"{w['cls_abs_all']:.2e}",
                f"{used.max():.0%}",
                f"{int((used > 1).sum())}/{n}",
                f"{det['f1']:.4f} ({det['n_ref']})",
            )
    return table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1000, help="frames per demo-model run")
    ap.add_argument(
        "--seed-frames",
        type=int,
        default=1000,
        help="frames per seed-model run (640-size runs cost ~6x more); with --fp16: per 640 run",
    )
    ap.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--defects-only", action="store_true", help="only scan the smallest planted defects the rule catches"
    )
    ap.add_argument("--runs", default=None, help="comma-separated run names to measure (default: all)")
    ap.add_argument("--fp16", action="store_true", help="measure the FP16 rule (--half ONNX vs FP32 PyTorch) instead")
    ap.add_argument("--noise", type=int, default=20, help="with --fp16: uniform-noise inputs per run, beside frames")
    ap.add_argument("--defect-sizes", default="256,640", help="with --fp16: sizes the planted defects are exported at")
    ap.add_argument(
        "--table", type=Path, nargs="+", default=None, help="with --fp16: print the tables of saved --json runs"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_plugins()
    demo = load(BUNDLED_MODEL)
    console = Console(width=200 if args.fp16 else 150)
    if args.fp16:
        fp16_main(args, demo, console)
        return
    frames = real_frames(args.frames)
    defects = Table(
        title="Smallest planted defect the FP32 rule fails (demo model, 256, 8 real frames)", title_justify="left"
    )
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
    runs = [
        ("demo-256", demo, (256, 256), 1, False, frames),
        ("demo-256-dynamic", demo, (256, 256), 8, True, frames),
        ("seed-640", seed, (640, 640), 1, False, frames[:n_seed]),
        ("seed-512x640", seed, (512, 640), 1, False, frames[-n_seed:]),
        ("seed-640-dynamic", seed, (640, 640), 4, True, frames[:n_seed]),
    ]
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
    table = Table(
        title="FP32 ONNX Runtime vs PyTorch: largest difference over the real frames of each run",
        caption=f"FP32 rule: {tol.describe()}",
        title_justify="left",
        caption_justify="left",
    )
    for col in (
        "run",
        "frames",
        "reference",
        "xy px",
        "wh px",
        "wh relative",
        "objectness",
        "classes",
        "limit used",
        "frames failing",
    ):
        table.add_column(col, justify="left" if col in ("run", "reference") else "right")
    for r in results:
        for which in ("fused", "unfused"):
            w = r["worst"][which]
            table.add_row(
                r["name"],
                str(r["frames"]),
                which,
                f"{w['xy_abs']:.2e}",
                f"{w['wh_abs']:.2e}",
                f"{w['wh_rel']:.2e}",
                f"{w['obj_abs']:.2e}",
                f"{w['cls_abs']:.2e}",
                f"{w['limit_used']:.0%}",
                f"{r['rule_failures'][which]}/{r['frames']}",
            )
    console.print(table)


if __name__ == "__main__":
    main()
