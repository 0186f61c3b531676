"""Benchmark `clo-export onnx` on the seed model at 640: export time, node counts, ORT vs PyTorch latency.

Run: .venv/bin/python bench/export.py [--runs 30] [--weights best.pt]
Both runtimes are timed in one run on the same machine, interleaved, so the ratio is fair on a
noisy shared machine. Without --weights the seed config (nc=80) is built untrained: latency does
not depend on the weights.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from clo_export.backends.onnxrt import OnnxRuntimeRunner
from clo_export.blocks import load_plugins
from clo_export.export.exporter import ExportOptions, build, trace
from clo_export.export.mode import export_model
from clo_export.export.simplify import simplify
from clo_export.models.checkpoint import load, save_yolov5
from clo_export.models.yolo import DetectionModel


def median_ms(fn, runs: int) -> float:
    """Median wall time of ``fn()`` in milliseconds, after two warm-up calls."""
    fn(), fn()
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=Path)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--runs", type=int, default=30)
    args = ap.parse_args()
    load_plugins()
    torch.set_num_threads(torch.get_num_threads())
    console = Console()
    tmp = Path(tempfile.mkdtemp())
    weights = args.weights or save_yolov5(DetectionModel().eval(), tmp / "seed.pt")
    loaded = load(weights)
    size = (args.imgsz, args.imgsz)

    t = time.perf_counter()
    proto, _, reference, simplified = build(loaded, ExportOptions(imgsz=size))
    export_s = time.perf_counter() - t
    raw = trace(export_model(loaded.model, size), ExportOptions(imgsz=size))
    counts = {"raw (TorchScript exporter)": len(raw.graph.node)}
    for name in ("onnxsim", "onnxslim"):
        t = time.perf_counter()
        model, result = simplify(raw, name)
        counts[f"{name} ({time.perf_counter() - t:.1f} s)"] = (
            len(model.graph.node) if result.used == name else f"failed: {result.note}"
        )

    x = np.random.default_rng(0).random((1, 3, *size), dtype=np.float32)
    xt = torch.from_numpy(x)
    with OnnxRuntimeRunner(proto.SerializeToString(), providers=["CPUExecutionProvider"]) as ort, torch.no_grad():
        eager = loaded.model.eval()
        pt_ms, fused_ms, ort_ms = [], [], []
        for _ in range(3):  # interleave rounds so background noise hits all three
            pt_ms.append(median_ms(lambda: eager(xt), args.runs // 3))
            fused_ms.append(median_ms(lambda: reference(xt), args.runs // 3))
            ort_ms.append(median_ms(lambda: ort.infer({"images": x}), args.runs // 3))
    pt, fused, ox = (statistics.median(v) for v in (pt_ms, fused_ms, ort_ms))

    table = Table(
        title=f"clo-export onnx, seed model at {args.imgsz} ({torch.get_num_threads()} threads)", title_justify="left"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    table.add_row("export + simplify + lint + checker", f"{export_s:.1f} s")
    for name, n in counts.items():
        table.add_row(f"nodes: {name}", str(n))
    table.add_row("PyTorch eager CPU latency (median)", f"{pt:.1f} ms")
    table.add_row("PyTorch fused export-mode CPU latency", f"{fused:.1f} ms")
    table.add_row("ONNX Runtime CPU latency (median)", f"{ox:.1f} ms")
    table.add_row("speed-up ORT / PyTorch eager", f"{pt / ox:.2f}x")
    table.add_row("speed-up ORT / PyTorch fused", f"{fused / ox:.2f}x")
    console.print(table)


if __name__ == "__main__":
    main()
