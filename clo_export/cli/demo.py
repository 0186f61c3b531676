"""``clo-export demo``: the whole chain on the bundled shapes model, with real accuracy numbers."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from typing_extensions import Annotated

from clo_export.cli.common import accuracy_table, comparison_table, console, fail, guarded
from clo_export.cli.quantize import progress_bars
from clo_export.errors import CloExportError


def summary_table(rows) -> Table:
    """Per artifact: mAP against the video's ground truth (YOLOv5 val.py's and COCO's), agreement with PyTorch, FPS."""
    table = Table(
        title="clo-export demo: the bundled shapes model on the demo video",
        title_justify="left",
        caption="mAP: YOLOv5 val.py definition (interpolated-curve integration); COCO: pycocotools' 101-point steps",
        caption_justify="left",
    )
    for col in ("artifact", "mAP@.5", "mAP@.5:.95", "COCO mAP@.5:.95", "F1 vs PyTorch", "FPS"):
        table.add_column(col, justify="left" if col == "artifact" else "right")
    for r in rows:
        f1 = "reference" if r.agreement_f1 is None else f"{r.agreement_f1:.4f}"
        table.add_row(
            f"{r.name} ({r.backend})",
            f"{r.map50:.4f}",
            f"{r.map50_95:.4f}",
            f"{r.coco_map50_95:.4f}",
            f1,
            f"{r.fps:.1f}",
        )
    return table


@guarded
def demo(
    out: Annotated[
        Path,
        typer.Option("--out", "-o", help="Folder for the video, calibration set, models, annotated videos and JSONL."),
    ] = Path("demo-out"),
    quick: Annotated[
        bool, typer.Option("--quick", help="Short video and small calibration set (a smoke test of the chain).")
    ] = False,
    frames: Annotated[
        Optional[int], typer.Option(help="Demo video length in frames at 30 fps (default 300, --quick 45).")
    ] = None,
    calib: Annotated[Optional[int], typer.Option(help="Calibration images (default 256, --quick 24).")] = None,
    check_every: Annotated[int, typer.Option(help="Compare every K-th frame with PyTorch.")] = 5,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Use a --out folder that holds other files (they are kept; a demo's own files are replaced).",
        ),
    ] = False,
    all_int8: Annotated[
        bool,
        typer.Option(
            "--all-int8",
            help="Quantize with no float fallback (clo-export quantize --all-int8), to see what the fallback buys.",
        ),
    ] = False,
) -> None:
    """Run the whole chain on the bundled demo model: export, quantize, infer, score against ground truth.

    Exits 1 when a target it prints is missed (summary.json and the artifacts are kept all the same).
    """
    from clo_export.demo.run import BUNDLED_MODEL, demo_folder
    from clo_export.quantization.calibset import DEFAULT_HOLDOUT
    from clo_export.validate import check_demo_options

    check_demo_options(out, frames, calib, check_every)
    n_frames = frames if frames is not None else (45 if quick else 300)
    n_calib = calib if calib is not None else (24 if quick else 256)
    holdout = 16 if quick else DEFAULT_HOLDOUT
    if not BUNDLED_MODEL.is_file():
        raise CloExportError(
            f"the bundled demo model {BUNDLED_MODEL} is missing; make it with python tools/make_demo_model.py"
        )
    with demo_folder(out, overwrite):  # an interrupted or failed demo removes what it wrote
        targets = _chain(out, n_frames, n_calib, holdout, check_every, all_int8)
    missed = [t for t in targets if not t.met]  # a missed target keeps its outputs: they are what to look at
    if missed:
        raise fail(f"the demo missed {len(missed)} of its {len(targets)} targets (above)")


def _chain(out: Path, n_frames: int, n_calib: int, holdout: int, check_every: int, all_int8: bool) -> list:
    """The demo's five steps, writing into ``out``; returns its targets (demo.run.Target), met or not."""
    from clo_export.backends.pytorch import TorchRunner
    from clo_export.demo.run import BUNDLED_MODEL, demo_targets, run_artifact, write_calibration_set, write_demo_video
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.export.parity import parity_batches
    from clo_export.fileio import json_text, write_text_atomic
    from clo_export.models.checkpoint import load
    from clo_export.quantization.quantize import QuantizeOptions, quantize

    t0 = time.perf_counter()
    loaded = load(BUNDLED_MODEL)
    imgsz = loaded.imgsz_hint or (256, 256)

    console.rule("1/5 demo data")
    gt = write_demo_video(out / "demo.mp4", n_frames)
    calib_dir = write_calibration_set(out / "calib", n_calib + holdout)
    console.print(
        f"demo video {out / 'demo.mp4'}: {n_frames} frames 640x480, {sum(len(g) for g in gt)} ground-truth boxes; "
        f"{n_calib + holdout} calibration images in {calib_dir}"
    )

    console.rule("2/5 clo-export onnx")
    onnx_path = out / "demo-shapes.onnx"
    exported = export_onnx(
        loaded, onnx_path, ExportOptions(imgsz=imgsz), parity_batches(imgsz, source=calib_dir, limit=8)
    )
    console.print(comparison_table(exported.parity, "ONNX Runtime vs PyTorch"))

    console.rule("3/5 clo-export quantize")
    target_drop = None if all_int8 else QuantizeOptions.target_drop
    qopts = QuantizeOptions(num=n_calib, holdout=holdout, target_drop=target_drop, min_agreement=0)  # judged below
    with progress_bars() as bars:
        quantized = quantize(onnx_path, calib_dir, out / "demo-shapes.int8.onnx", qopts, **bars)
    fallback = quantized.choice.float_sites if quantized.choice else []
    console.print(
        f"method {quantized.method}; float sites {', '.join(fallback) or 'none'}; "
        f"{100 * quantized.int8_share:.1f} % of conv MACs INT8; {sum(quantized.seconds.values()):.0f} s",
        markup=False,
    )
    if quantized.refinement is not None:
        console.print(quantized.refinement.summary())
    console.print(accuracy_table(quantized.report))

    console.rule("4/5 clo-infer on the demo video")
    video = out / "demo.mp4"
    rows = [run_artifact("pytorch", BUNDLED_MODEL, video, gt, out)]
    for name, path in (("onnx-fp32", onnx_path), ("onnx-int8", quantized.path)):
        rows.append(run_artifact(name, path, video, gt, out, TorchRunner(loaded.model), check_every))
        console.print(f"{name}: {rows[-1].fps:.1f} FPS, wrote {rows[-1].video.name} and {rows[-1].jsonl.name}")
    rows += engine_rows(onnx_path, quantized.path, video, gt, out, TorchRunner(loaded.model), check_every)

    console.rule("5/5 summary")
    console.print(summary_table(rows))
    targets = demo_targets(rows, exported.parity)
    for t in targets:
        console.print(("[green]met[/]   " if t.met else "[red]missed[/] ") + t.text)
    facts = {
        "imgsz": list(imgsz),
        "frames": n_frames,
        "calibration_images": n_calib,
        "all_int8": all_int8,
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": [{**r.__dict__, "video": r.video.name, "jsonl": r.jsonl.name} for r in rows],
        "targets": [{"target": t.text, "met": t.met} for t in targets],
    }
    write_text_atomic(out / "summary.json", json_text(facts, indent=2))
    console.print(f"demo finished in {facts['seconds']:.0f} s; summary.json, annotated videos and JSONL in {out}/")
    return targets


def engine_rows(fp32: Path, int8: Path, video: Path, gt, out: Path, reference, check_every: int) -> list:
    """FP16 and INT8 TensorRT engines, where TensorRT and a GPU are present (built by the library step)."""
    if importlib.util.find_spec("tensorrt") is None:
        console.print(
            "TensorRT is not installed here: engine rows skipped (pip install -e '.[gpu]' on an NVIDIA machine)",
            markup=False,
        )
        return []
    from clo_export.demo.run import run_artifact
    from clo_export.engine.build import build_engine
    from clo_export.engine.plan import BuildRequest

    rows = []
    for name, model, precision in (("trt-fp16", fp32, "fp16"), ("trt-int8", int8, "int8")):
        built = build_engine(model, BuildRequest(precision=precision), out / f"demo-shapes.{name}.engine")
        console.print(
            f"{name}: built {built.engine_path.name} with TensorRT {built.sidecar.tensorrt_version} "
            f"in {built.build_seconds:.0f} s",
            markup=False,
        )
        rows.append(run_artifact(name, built.engine_path, video, gt, out, reference, check_every))
    return rows
