"""INT8 accuracy of clo-export's quantizer against ONNX Runtime's and NVIDIA ModelOpt's, on the same data.

Run: .venv/bin/python bench/quantize_accuracy.py [--sets 3] [--eval-scenes 300] [--no-modelopt] [--sites]

Every quantizer gets the same FP32 ONNX (the bundled demo model at its image size) and the same
256 calibration tensors (calibration set 1: scenes from clo_export.demo.shapes with their own
seed). clo-export's default also uses the 128 held-out images of that calibration source for its
decisions, as `clo-export quantize` does. Each INT8 model is then scored against labels on data
no quantizer saw: 300 unseen scenes from the same generator, the demo video's 300 frames
(rendered in memory), and the same frames as `make demo` scores them (written to MP4 by the demo's own
function, then decoded: the "MP4" columns). Calibration images are PNG, like the scenes scored (JPEG
artefacts in calibration only would be a domain shift of their own). The table prints the mAP@.5 and
mAP@.5:.95 drops from FP32 (YOLOv5 val thresholds: conf 0.001, NMS IoU 0.6) and the share of Conv MACs in INT8.
With --sets 3, clo-export's default is run on two more calibration sets of 256 (other seeds) to
show how much the drop depends on which images were drawn.

ModelOpt (nvidia-modelopt[onnx] 0.47.0) runs in its own virtual environment, made on first use
under --modelopt-venv: its [onnx] extra pins onnx and pulls onnxruntime-gpu and cupy, which must
not reach clo-export's environment. It is called with its defaults for int8 (calibration on the
CPU execution provider, high-precision dtype fp32 so that ONNX Runtime CPU runs the result).
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

from clo_export.backends.onnxrt import OnnxRuntimeRunner
from clo_export.data.preprocess import preprocess, scale_boxes
from clo_export.demo.run import BUNDLED_MODEL, VIDEO_SEED, VIDEO_SIZE, read_video, write_demo_video
from clo_export.demo.shapes import make_dataset, make_video_frames
from clo_export.metrics import evaluate
from clo_export.postprocess import nms
from clo_export.quantization.calibset import DEFAULT_HOLDOUT, CalibrationData, split_sources
from clo_export.quantization.macs import int8_conv_share
from clo_export.quantization.quantize import QuantizeOptions, quantize

MODELOPT = "nvidia-modelopt[onnx]==0.47.0"
TORCH = "torch==2.13.0"  # if ModelOpt pulls torch, the CPU build we pin everywhere
NUM, HOLDOUT = 256, DEFAULT_HOLDOUT
EVAL_SEED, CALIB_SEEDS = 100, (1001, 1002, 1003)
MODELOPT_SCRIPT = """
import sys, numpy as np
import modelopt.onnx.quantization as moq
moq.quantize(sys.argv[1], quantize_mode="int8", calibration_data={sys.argv[4]: np.load(sys.argv[2])},
             calibration_eps=["cpu"], high_precision_dtype="fp32", output_path=sys.argv[3], log_level="ERROR")
"""


def scenes(seed: int, n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    images, gts = [], []
    for img, boxes in make_dataset(seed, n, VIDEO_SIZE):
        images.append(img)
        gts.append(boxes)
    return images, gts


def video_frames(n: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
    frames = list(make_video_frames(VIDEO_SEED, n, VIDEO_SIZE))
    return [f.image for f in frames], [f.boxes for f in frames]


def video_mp4_frames(n: int, work: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The demo video as ``make demo`` scores it: written to MP4 by the demo's own function, then decoded."""
    gts = write_demo_video(work / "video.mp4", n)
    images = read_video(work / "video.mp4")[:n]
    return images, gts[: len(images)]


def demo_fp32(work: Path) -> tuple[Path, tuple[int, int]]:
    """The bundled demo model exported to ``work/demo.onnx`` at its training size (once per ``work``), and that size."""
    from clo_export.blocks import load_plugins
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load

    load_plugins()
    work.mkdir(parents=True, exist_ok=True)
    loaded = load(BUNDLED_MODEL)
    imgsz = tuple(loaded.imgsz_hint or (256, 256))
    fp32 = work / "demo.onnx"
    if not fp32.is_file():
        export_onnx(loaded, fp32, ExportOptions(imgsz=imgsz))
    return fp32, imgsz


def score(model: Path, images: list[np.ndarray], gts: list[np.ndarray], imgsz: tuple[int, int]) -> tuple[float, float]:
    """(mAP@.5, mAP@.5:.95) against labels at val thresholds, ONNX Runtime CPU."""
    dets = []
    with OnnxRuntimeRunner(model, ["CPUExecutionProvider"]) as r:
        name = r.input_specs()[0].name
        for img in images:
            x, info = preprocess(img, imgsz)
            d = nms(r.infer({name: x})["output0"], 0.001, 0.6, max_det=300)[0]
            dets.append(scale_boxes(d, info) if len(d) else d)
    m = evaluate(dets, gts)
    return m.map50, m.map50_95


def modelopt_python(venv: Path) -> Path:
    """The ModelOpt venv's interpreter, made (pip install) on first use."""
    py = venv / "bin" / "python"
    if not py.is_file():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "--quiet", MODELOPT, TORCH], check=True)
    return py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sets", type=int, default=3, choices=(1, 2, 3), help="calibration sets for clo-export's default")
    ap.add_argument("--eval-scenes", type=int, default=300)
    ap.add_argument("--video-frames", type=int, default=300)
    ap.add_argument("--no-modelopt", action="store_true")
    ap.add_argument("--modelopt-venv", type=Path, default=Path(".bench-venv/modelopt"))
    ap.add_argument("--work", type=Path, help="keep the models here (default: a temporary folder)")
    ap.add_argument("--sites", action="store_true", help="print each default run's site gains and fallback steps")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    console = Console(width=140)
    work = args.work or Path(tempfile.mkdtemp(prefix="clo-qbench-"))
    fp32, imgsz = demo_fp32(work)
    calib_dirs = []
    for k, seed in enumerate(CALIB_SEEDS[: args.sets]):
        d = work / f"calib{k + 1}"
        d.mkdir(exist_ok=True)
        for i, (img, _) in enumerate(make_dataset(seed, NUM + HOLDOUT, VIDEO_SIZE)):
            cv2.imwrite(str(d / f"{i:04d}.png"), img)  # lossless: the same kind of image as the scenes scored
        calib_dirs.append(d)
    evals = {
        "unseen": scenes(EVAL_SEED, args.eval_scenes),
        "video": video_frames(args.video_frames),
        "MP4": video_mp4_frames(args.video_frames, work),
    }
    base = {k: score(fp32, *v, imgsz) for k, v in evals.items()}

    rows: list[tuple[str, str, Path, float]] = []
    split = split_sources(calib_dirs[0], NUM, HOLDOUT, 0)  # the 256 tensors clo-export calibrated on
    feeds = list(CalibrationData(split.calib, imgsz, "images"))
    t = time.perf_counter()
    rows.append(
        (
            "ONNX Runtime quantize_static (QDQ, int8 symmetric, per-channel)",
            "set 1",
            ort_static(fp32, feeds, work),
            time.perf_counter() - t,
        )
    )
    t = time.perf_counter()
    rows.append(
        (
            "  the same, only Conv and MatMul quantized",
            "set 1",
            ort_static(fp32, feeds, work, ["Conv", "MatMul"]),
            time.perf_counter() - t,
        )
    )
    if not args.no_modelopt:
        py = modelopt_python(args.modelopt_venv)
        np.save(work / "calib1.npy", np.concatenate([f["images"] for f in feeds]))
        t = time.perf_counter()
        out = work / "modelopt.int8.onnx"
        subprocess.run(
            [str(py), "-c", MODELOPT_SCRIPT, str(fp32), str(work / "calib1.npy"), str(out), "images"], check=True
        )
        rows.append(("NVIDIA ModelOpt 0.47 quantize (int8 defaults)", "set 1", out, time.perf_counter() - t))

    for k, d in enumerate(calib_dirs):
        t = time.perf_counter()
        r = quantize(fp32, d, work / f"default{k + 1}.int8.onnx", QuantizeOptions(min_agreement=0))  # scored below
        rows.append(("clo-export default (auto)", f"set {k + 1}", r.path, time.perf_counter() - t))
        if args.sites:
            console.print(decisions_table(r, f"set {k + 1}"))
    t = time.perf_counter()
    r = quantize(
        fp32,
        calib_dirs[0],
        work / "entropy.int8.onnx",
        QuantizeOptions(method="entropy", target_drop=None, min_agreement=0),
    )
    rows.append(("clo-export --method entropy --all-int8 (old default)", "set 1", r.path, time.perf_counter() - t))

    table = Table(
        title=f"INT8 vs FP32 on the demo model ({imgsz[0]}x{imgsz[1]}); drops in mAP points, labelled data no "
        f"quantizer saw",
        title_justify="left",
    )
    for col in (
        "quantizer",
        "calibration",
        f"{args.eval_scenes} scenes Δ@.5",
        "Δ@.5:.95",
        "video Δ@.5",
        "Δ@.5:.95",
        "MP4 Δ@.5",
        "Δ@.5:.95",
        "INT8 conv MACs",
        "time s",
    ):
        table.add_column(col, justify="left" if col in ("quantizer", "calibration") else "right")
    table.add_row(
        "FP32",
        "",
        f"mAP {base['unseen'][0]:.4f}",
        f"{base['unseen'][1]:.4f}",
        f"mAP {base['video'][0]:.4f}",
        f"{base['video'][1]:.4f}",
        f"mAP {base['MP4'][0]:.4f}",
        f"{base['MP4'][1]:.4f}",
        "",
        "",
    )
    drops = []
    for name, calib, path, secs in rows:
        s = {k: score(path, *v, imgsz) for k, v in evals.items()}
        d = {k: (100 * (base[k][0] - s[k][0]), 100 * (base[k][1] - s[k][1])) for k in s}
        drops.append((name, d))
        table.add_row(
            name,
            calib,
            f"{d['unseen'][0]:+.2f}",
            f"{d['unseen'][1]:+.2f}",
            f"{d['video'][0]:+.2f}",
            f"{d['video'][1]:+.2f}",
            f"{d['MP4'][0]:+.2f}",
            f"{d['MP4'][1]:+.2f}",
            f"{100 * int8_conv_share(onnx.load(str(path))):.1f} %",
            f"{secs:.0f}",
        )
    console.print(table)
    ours = [d for n, d in drops if n.startswith("clo-export default")]
    if len(ours) > 1:
        for k in evals:
            v = [d[k][1] for d in ours]
            console.print(
                f"clo-export default over {len(v)} calibration sets, {k}: mAP@.5:.95 drop {min(v):+.2f} … "
                f"{max(v):+.2f} "
                f"(spread {max(v) - min(v):.2f} points)"
            )
    console.print(f"models in {work}")


def decisions_table(r, calib: str) -> Table:
    """What the default decided on one calibration set: method scores, each site's float-alone gain and its noise
    (standard error over the held-out images), and the fallback's steps."""
    scores = ", ".join(f"{m} {v.box_error:.4f}" for m, v in r.method_scores.items())
    table = Table(
        title=f"{calib}: method {r.method} (all-INT8 box error %: {scores}); sites by recovery per MAC",
        title_justify="left",
    )
    for col in ("site", "MAC share", "gain %", "gain se", "gain/se", "step cut", "cut se", "held-out drop", "kept"):
        table.add_column(col, justify="left" if col == "site" else "right")
    steps = {s["site"]: s for s in (r.choice.steps if r.choice else [])}
    order = sorted(r.sites, key=lambda x: (not x.site.output, -x.gain / max(x.mac_share, 1e-3)))
    for x in order:
        st = steps.get(x.site.name, {})
        table.add_row(
            x.site.name,
            f"{x.mac_share:.4f}",
            f"{x.gain:+.4f}",
            f"{x.gain_se:.4f}",
            f"{x.gain / x.gain_se:+.1f}" if x.gain_se else "",
            f"{st['cut']:+.4f}" if "cut" in st else st.get("skipped", ""),
            f"{st['cut_se']:.4f}" if "cut_se" in st else "",
            f"{st['drop50_95']:.2f}" if "drop50_95" in st else "",
            {True: "yes", False: "no"}.get(st.get("kept"), ""),
        )
    return table


def ort_static(fp32: Path, feeds: list[dict[str, np.ndarray]], work: Path, ops: list[str] | None = None) -> Path:
    """ONNX Runtime's quantize_static as TensorRT wants it: QDQ, symmetric int8, per-channel weights, float bias.

    By default it quantizes every op type it knows, the decoded output included: one scale for box
    pixels and scores rounds every score to 0. ``ops`` limits it (op_types_to_quantize).
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.it = iter(feeds)

        def get_next(self):
            return next(self.it, None)

    out = work / ("ort.int8.onnx" if ops is None else "ort-" + "-".join(ops).lower() + ".int8.onnx")
    quantize_static(
        str(fp32),
        str(out),
        Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        op_types_to_quantize=ops,
        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True, "QuantizeBias": False},
    )
    return out


if __name__ == "__main__":
    main()
