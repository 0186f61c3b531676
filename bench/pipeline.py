"""Benchmark of clo-infer's pipeline on ONNX Runtime CPU (not a test).

For the seed model (nc=80) at 640 on a 640x480 video, in one run:
  - pure inference FPS (the model alone on one preprocessed frame, one session, default threads),
  - end-to-end FPS of a sequential loop (that same session), of the threaded pipeline as
    clo-infer runs it (decode, preprocess, inference streams, postprocess, annotate+encode mp4,
    JSON Lines), of that pipeline writing JSON Lines only (no drawing or video encoding) and of
    the threaded pipeline on that one session (--workers 1),
  - for context, the throughput of the pipeline's inference streams alone (no other work),
  - NMS time per frame on the (1, 25200, 85) output at the default thresholds,
  - RSS while processing the whole video (default 3,000 frames): growth from frame 300 to the end.

The model is untrained: BatchNorm statistics are measured on a few frames (so the output follows
the image) and the objectness bias is raised so frames carry detections. Usage:

    python bench/pipeline.py [--frames 3000] [--e2e-frames 400] [--rounds 3] [--threads N] [--workers N]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clo_export.backends.select import load_runner, load_runners  # noqa: E402
from clo_export.data.preprocess import preprocess, preprocess_batch  # noqa: E402
from clo_export.data.readers import open_source  # noqa: E402
from clo_export.data.sinks import JsonlSink, VideoSink  # noqa: E402
from clo_export.pipeline import InferOptions, Pipeline  # noqa: E402
from clo_export.postprocess import nms  # noqa: E402
from tests.untrained import follow_the_image  # noqa: E402

SIZE = (640, 480)


def scene(rng: np.random.Generator) -> np.ndarray:
    w, h = SIZE
    img = cv2.resize(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)
    for _ in range(6):
        c = tuple(int(v) for v in rng.integers(0, 255, 3))
        cv2.circle(img, (int(rng.integers(0, w)), int(rng.integers(0, h))), int(rng.integers(15, 90)), c, -1)
    return img


def make_video(path: Path, frames: int) -> Path:
    """A 640x480 30 fps mp4; 50 distinct scenes, each drifting so consecutive frames differ."""
    rng = np.random.default_rng(0)
    scenes = [scene(rng) for _ in range(50)]
    w = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, SIZE)
    for i in range(frames):
        w.write(np.roll(scenes[(i // 60) % 50], 2 * (i % 60), axis=1))
    w.release()
    return path


def make_model(out: Path) -> Path:
    """Seed config (nc=80) with measured BatchNorm statistics and raised objectness, exported at 640."""
    import torch

    from clo_export.blocks import load_plugins
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.fileio import sha256_file
    from clo_export.models.checkpoint import LoadedModel, save_yolov5
    from clo_export.models.yolo import DEFAULT_CFG, DetectionModel

    load_plugins()
    torch.manual_seed(0)
    model = DetectionModel(DEFAULT_CFG)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(preprocess_batch([scene(rng) for _ in range(4)], 640)[0])
    follow_the_image(model, x, obj_bias=1.0, cls_bias=3.0)  # ~400 boxes over conf 0.25, ~80 kept: a busy scene
    pt = save_yolov5(model, out.with_suffix(".pt"), opt={"imgsz": 640})
    loaded = LoadedModel(model.half().float(), pt, "bench", sha256_file(pt), (640, 640))
    return export_onnx(loaded, out, ExportOptions(imgsz=(640, 640))).path


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def pure_inference_fps(model: Path, frame: np.ndarray, threads: int | None, n: int) -> tuple[float, np.ndarray]:
    runner, info = load_runner(model, "cpu", threads=threads)
    x, _ = preprocess(frame, info.imgsz)
    with runner:
        for _ in range(5):
            out = runner.infer({"images": x})["output0"]
        t0 = time.perf_counter()
        for _ in range(n):
            runner.infer({"images": x})
        return n / (time.perf_counter() - t0), out


def streams_fps(model: Path, frame: np.ndarray, threads: int | None, workers: int | None, n: int) -> tuple[float, int]:
    """Frames per second of the pipeline's inference streams running side by side, nothing else."""
    runners, info = load_runners(model, "cpu", threads=threads, workers=workers)
    x, _ = preprocess(frame, info.imgsz)
    for r in runners:
        r.activate()
        r.infer({"images": x})

    def loop(r) -> None:
        for _ in range(n):
            r.infer({"images": x})

    threads_ = [threading.Thread(target=loop, args=(r,)) for r in runners]
    t0 = time.perf_counter()
    for t in threads_:
        t.start()
    for t in threads_:
        t.join()
    fps = n * len(runners) / (time.perf_counter() - t0)
    for r in runners:
        r.deactivate()
    return fps, len(runners)


def end_to_end(
    model: Path,
    video: Path,
    out: Path,
    frames: int | None,
    threads: int | None,
    workers: int | None,
    threaded: bool,
    on_frame=None,
    video_out: bool = True,
):
    """The sequential loop on one default session, or the threaded pipeline with clo-infer's streams."""
    if threaded:
        runners, info = load_runners(model, "cpu", threads=threads, workers=workers)
    else:
        runner, info = load_runner(model, "cpu", threads=threads)
        runners = [runner]
    src = open_source(video, frames)
    sinks = [JsonlSink(out / "dets.jsonl", info.names)]
    if video_out:
        sinks.append(VideoSink(out / "annotated.mp4", src.fps, src.size))
    for r in runners:
        r.activate()
    try:
        return Pipeline(src, runners, info, sinks, InferOptions(), on_frame=on_frame).run(threaded=threaded)
    finally:
        for r in runners:
            r.deactivate()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=3000, help="frames in the long (memory) video")
    ap.add_argument("--e2e-frames", type=int, default=400, help="frames for the sequential/pipelined FPS runs")
    ap.add_argument("--infer-iters", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the FPS measures (best of each kept)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: clo-infer's)")
    ap.add_argument("--workers", type=int, default=None, help="pipeline inference streams (default: clo-infer's)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="clo-bench-"))
    t0 = time.perf_counter()
    model = make_model(tmp / "seed640.onnx")
    video = make_video(tmp / "video.mp4", max(args.frames, args.e2e_frames))
    print(
        f"setup (export at 640, {max(args.frames, args.e2e_frames)}-frame 640x480 video): "
        f"{time.perf_counter() - t0:.0f} s",
        flush=True,
    )

    frame = scene(np.random.default_rng(7))
    rounds: list[tuple[float, ...]] = []  # pure, sequential, pipelined, one session, JSON only, streams alone
    for _ in range(args.rounds):  # interleaved, so a noisy neighbour hits every measure alike
        infer_fps, out = pure_inference_fps(model, frame, args.threads, args.infer_iters)
        seq = end_to_end(model, video, tmp, args.e2e_frames, args.threads, None, threaded=False)
        pipe = end_to_end(model, video, tmp, args.e2e_frames, args.threads, args.workers, threaded=True)
        single = end_to_end(model, video, tmp, args.e2e_frames, args.threads, 1, threaded=True)
        json_only = end_to_end(
            model, video, tmp, args.e2e_frames, args.threads, args.workers, threaded=True, video_out=False
        )
        capacity, streams = streams_fps(model, frame, args.threads, args.workers, args.infer_iters // 2)
        rounds.append((infer_fps, seq.fps, pipe.fps, single.fps, json_only.fps, capacity))
        print(
            f"round {len(rounds)}: pure {infer_fps:.1f}, sequential {seq.fps:.1f}, pipelined {pipe.fps:.1f} FPS "
            f"(ratio {pipe.fps / infer_fps:.2f})",
            flush=True,
        )
    infer_fps, seq_fps, pipe_fps, single_fps, json_fps, capacity = (max(r[k] for r in rounds) for k in range(6))

    candidates = int((out[0, :, 4] > 0.25).sum())
    nms(out)  # warm
    reps = 200
    t = time.perf_counter()
    for _ in range(reps):
        dets = nms(out)
    nms_ms = (time.perf_counter() - t) / reps * 1e3

    samples: dict[str, float] = {}

    def watch(n: int, _dets: int) -> None:
        if n == 300:
            samples["at300"] = rss_mb()
        if n >= 300 and n % 50 == 0:
            samples["max_after"] = max(samples.get("max_after", 0.0), rss_mb())

    long = end_to_end(model, video, tmp, args.frames, args.threads, args.workers, threaded=True, on_frame=watch)
    samples["end"] = rss_mb()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    growth = max(samples.get("max_after", 0.0), samples["end"]) - samples.get("at300", samples["end"])

    rows = [
        ("pure inference (ORT CPU, 1x3x640x640)", f"{infer_fps:.1f} FPS", "1.00"),
        ("end-to-end, sequential loop", f"{seq_fps:.1f} FPS", f"{seq_fps / infer_fps:.2f}"),
        (
            f"end-to-end, threaded pipeline ({pipe.streams} inference streams)",
            f"{pipe_fps:.1f} FPS",
            f"{pipe_fps / infer_fps:.2f}",
        ),
        ("pipeline / sequential", "", f"{pipe_fps / seq_fps:.2f}"),
        (
            "end-to-end, threaded pipeline on one session (--workers 1)",
            f"{single_fps:.1f} FPS",
            f"{single_fps / infer_fps:.2f}",
        ),
        (
            "end-to-end, threaded pipeline, JSON Lines only (no video)",
            f"{json_fps:.1f} FPS",
            f"{json_fps / infer_fps:.2f}",
        ),
        (
            f"context: {streams} inference streams alone, no other work",
            f"{capacity:.1f} FPS",
            f"{capacity / infer_fps:.2f}",
        ),
        (f"NMS per frame (25200x85, conf 0.25, {candidates} over conf, {len(dets[0])} kept)", f"{nms_ms:.2f} ms", ""),
        (
            f"RSS at frame 300 / max after / end ({long.frames} frames)",
            f"{samples.get('at300', 0):.0f} / {samples.get('max_after', 0):.0f} / {samples['end']:.0f} MB",
            "",
        ),
        ("RSS growth frame 300 -> end (limit 50 MB)", f"{growth:+.1f} MB", "ok" if growth < 50 else "OVER"),
        ("peak RSS (process)", f"{peak:.0f} MB", ""),
    ]
    w = max(len(r[0]) for r in rows)
    print(f"\nbest of {len(rounds)} interleaved rounds for the FPS rows")
    print(f"{'measure':<{w}}  {'value':>22}  {'ratio':>6}")
    for name, value, ratio in rows:
        print(f"{name:<{w}}  {value:>22}  {ratio:>6}")
    print("\nper-stage latency, last pipelined run (ms: mean / p50 / p95)")
    for s in pipe.stages.values():
        print(f"  {s.name:<12} {s.mean_ms:7.2f} {s.p50_ms:7.2f} {s.p95_ms:7.2f}")
    print(
        f"\nmachine: {os.cpu_count()} CPUs; pure inference and sequential: one session, threads "
        f"{args.threads or 'default'}; pipeline: clo-infer's streams (--workers {args.workers or 'auto'})"
    )


if __name__ == "__main__":
    main()
