"""Benchmark of several streams: one clo-infer process with N streams vs N clo-infer processes (not a test).

The demo model (the bundled demo-shapes.pt exported at 256 with a dynamic batch, as the demo and
bench/triton.py make it), ONNX Runtime CPU, clo-infer's default sessions, threads and batch (the way
people run it: one process with N streams infers one frame of each stream at a time, each of N
processes its one stream a frame at a time; ``--infer-batch K`` gives every process the same), JSON
Lines out.
For N = 1, 2, 4, 8 streams, in one run and on the same cores, interleaved (one process, then N
processes, for each N):

  - files: the demo video (640x480) N times, ``--frames`` frames each;
  - cameras: N real RTSP cameras on 127.0.0.1 (tests/rtsp_camera.py under Debian's python3: H.264,
    ``--camera-size`` at ``--camera-fps``), each stream read for ``--camera-seconds``
    (``--limit fps x seconds`` frames received, dropped ones included).

Live cameras cap the throughput at N x camera fps. With the defaults (320x240 at 30 fps) the 2-core
development machine, quiet, keeps up with 4 cameras (120 frames/s) in either setup and is overloaded
at 8 (240 frames/s); the overloaded rows compare what each setup gets through while dropping the
oldest frames. Small frames keep the cameras' own H.264 encoders (which share the cores) cheap. Raise
``--camera-fps`` (60 on that machine) until the N = 4 rows drop frames, or they only show the cameras'
rate.

Every clo-infer runs in a worker process (``bench/streams.py --worker``) that calls clo-infer's own
command in-process and records, per frame written, when it was written and how long after it was
read (the source yielding it): per-stream FPS, latency and the process's peak RSS come from there.
Aggregate FPS counts the frames written while every stream of the setup was running (the latest first
frame to the earliest last frame), so model loading and a process that started late do not count;
"wall" is launch to the last exit. "frames / CPU-s" is frames written per CPU-second of the clo-infer
processes (user + system, every thread): on a shared machine N processes get a larger share of the
cores than one, so this column says what a frame costs each setup whatever share it got. RSS is the
peak of the process tree, sampled every 50 ms (for one process: its own peak, VmHWM). Every process
has a time limit; cameras listen on 127.0.0.1 only; the cameras and the temporary folder are removed
at the end. Usage:

    python bench/streams.py [--frames 200] [--camera-seconds 10] [--streams 1,2,4,8] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_THROUGHPUT, TARGET_RSS, TARGET_SPREAD = 1.2, 1.5, 1.10  # at 4 streams (issue 23)


# ---- the worker: clo-infer's own command, in-process, with a record of every frame written
class _Stamped:
    """One source as clo-infer opened it, stamping each frame when the source yields it (MultiSource does this)."""

    def __init__(self, source):
        self._source = source

    def __getattr__(self, name):
        return getattr(self._source, name)

    def __iter__(self):
        for frame in self._source:
            frame.read_at = time.perf_counter()
            yield frame


def worker(report: Path, argv: list[str]) -> int:
    """Run ``clo-infer ARGV``; write per stream the write times and latencies, the exit code and the peak RSS."""
    import clo_export.data.streams as streams
    from clo_export.cli import infer as cli
    from clo_export.pipeline.core import Pipeline

    writes: dict[int, list[float]] = {}
    latency: dict[int, list[float]] = {}
    opened = streams.open_sources

    def open_stamped(*a, **k):
        src = opened(*a, **k)
        return src if isinstance(src, streams.MultiSource) else _Stamped(src)

    written = Pipeline._write

    def write(self, frame, dets) -> None:
        written(self, frame, dets)
        now = time.perf_counter()  # CLOCK_MONOTONIC on Linux: comparable across the processes
        writes.setdefault(frame.stream, []).append(now)
        latency.setdefault(frame.stream, []).append(now - frame.read_at)

    streams.open_sources, Pipeline._write = open_stamped, write
    rc = 0
    sys.argv = ["clo-infer", *argv]
    try:
        cli.main()
    except SystemExit as e:
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        use = resource.getrusage(resource.RUSAGE_SELF)
        stats = {"rc": rc, "peak_mb": peak_rss_mb(), "cpu_s": use.ru_utime + use.ru_stime}
        report.write_text(json.dumps({**stats, "writes": writes, "latency": latency}))
    return rc


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would carry the parent's peak over the fork)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


# ---- the parent: setups, processes, numbers
@dataclass
class Result:
    """One setup (N streams, one process or N processes) as measured."""

    source: str
    n: int
    mode: str  # "1 process" (N streams in it) or "N processes" (one stream each)
    fps: float  # aggregate, while every stream ran
    stream_fps: list[float]
    p50_ms: float
    p95_ms: float
    rss_mb: float  # peak of the process tree
    wall: float
    frames: int
    cpu_s: float  # CPU time of the clo-infer processes (user + system, every thread)

    @property
    def per_cpu_s(self) -> float:
        """Frames written per CPU-second: what a setup costs, whatever share of the cores it got."""
        return self.frames / self.cpu_s if self.cpu_s > 0 else 0.0

    @property
    def spread(self) -> float:
        lo = min(self.stream_fps)
        return max(self.stream_fps) / lo if lo > 0 else float("inf")


def tree_rss_mb(pids: list[int]) -> float:
    """Resident memory of ``pids`` and all their descendants now (MB)."""
    total, todo, seen = 0, list(pids), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/status") as f:
                total += next((int(line.split()[1]) for line in f if line.startswith("VmRSS:")), 0)
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (FileNotFoundError, ProcessLookupError):
            continue
    return total / 1024


def launch(commands: list[list[str]], out: Path, limit: float) -> tuple[list[dict], float, float]:
    """Run the clo-infer commands side by side (each in a worker, each with ``limit`` seconds); their reports,
    the process tree's sampled peak RSS and the wall time. A worker that fails or overruns raises."""
    reports = [out / f"report{i}.json" for i in range(len(commands))]
    logs = [open(out / f"log{i}.txt", "w") for i in range(len(commands))]
    t0 = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker", str(r), "--", *cmd],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=out,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        for cmd, r, log in zip(commands, reports, logs)
    ]
    peak = 0.0
    try:
        while any(p.poll() is None for p in procs):
            if time.perf_counter() - t0 > limit:
                raise RuntimeError(f"clo-infer ran past {limit:.0f} s: {commands[0]}")
            peak = max(peak, tree_rss_mb([p.pid for p in procs if p.poll() is None]))
            time.sleep(0.05)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for log in logs:
            log.close()
    wall = time.perf_counter() - t0
    got = []
    for p, r, i in zip(procs, reports, range(len(procs))):
        rep = json.loads(r.read_text()) if r.is_file() else {"rc": p.returncode}
        if p.returncode != 0 or rep["rc"] != 0:
            tail = (out / f"log{i}.txt").read_text()[-2000:]
            raise RuntimeError(f"clo-infer exited {rep['rc']} (worker {p.returncode}): {tail}")
        got.append(rep)
    return got, max(peak, max(rep["peak_mb"] for rep in got)), wall


def measure(source: str, mode: str, reports: list[dict], rss: float, wall: float) -> Result:
    """Aggregate and per-stream FPS over the window where every stream ran, pooled latency percentiles."""
    import numpy as np

    writes = [np.asarray(w) for rep in reports for _, w in sorted(rep["writes"].items(), key=lambda kv: int(kv[0]))]
    latency = np.concatenate([np.asarray(v) for rep in reports for v in rep["latency"].values()]) * 1e3
    start, end = max(w[0] for w in writes), min(w[-1] for w in writes)
    if end - start < 1.0:  # too short to have a common window: the whole span
        start, end = min(w[0] for w in writes), max(w[-1] for w in writes)
    counts = [int(((w >= start) & (w <= end)).sum()) for w in writes]
    span = end - start
    return Result(
        source,
        len(writes),
        mode,
        sum(counts) / span,
        [c / span for c in counts],
        float(np.percentile(latency, 50)),
        float(np.percentile(latency, 95)),
        rss,
        wall,
        sum(len(w) for w in writes),
        sum(rep["cpu_s"] for rep in reports),
    )


def run_setup(source: str, specs: list[str], model: Path, args, out: Path, limit_frames: int) -> list[Result]:
    """N streams as one clo-infer process, then as N processes (same options, same cores)."""
    batch = [] if args.infer_batch is None else ["--infer-batch", str(args.infer_batch)]
    common = ["--model", str(model), "--limit", str(limit_frames), *batch, "-q"]
    n = len(specs)
    limit = args.process_limit
    results = []
    d = out / f"{source}-{n}-one"
    d.mkdir()
    reps, rss, wall = launch([[*specs, *common, "--json", "dets.jsonl"]], d, limit)
    results.append(measure(source, "1 process", reps, rss, wall))
    d = out / f"{source}-{n}-sep"
    d.mkdir()
    reps, rss, wall = launch([[s, *common, "--json", f"dets{i}.jsonl"] for i, s in enumerate(specs)], d, limit)
    results.append(measure(source, f"{n} process{'es' if n > 1 else ' (separate)'}", reps, rss, wall))
    for r in results:
        print(
            f"  {source:<7} N={n} {r.mode:<20} {r.fps:6.1f} FPS  spread {r.spread:5.2f}  p50/p95 {r.p50_ms:6.1f}/"
            f"{r.p95_ms:6.1f} ms  RSS {r.rss_mb:6.0f} MB  wall {r.wall:5.1f} s  {r.per_cpu_s:5.1f} frames/CPU-s",
            flush=True,
        )
    return results


def make_model(tmp: Path) -> Path:
    """The demo model at its training size with a dynamic batch (one frame per stream in a batch)."""
    from clo_export.demo.run import BUNDLED_MODEL
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load

    loaded = load(BUNDLED_MODEL)
    opts = ExportOptions(imgsz=loaded.imgsz_hint or (256, 256), dynamic_batch=True)
    return export_onnx(loaded, tmp / "demo-shapes.onnx", opts).path


def start_cameras(n: int, args) -> list:
    """``n`` RTSP cameras on 127.0.0.1 (empty, with the reason printed, when GStreamer's server is missing)."""
    from tests.cameras import Camera

    cams = []
    try:
        for _ in range(n):
            cam = Camera()
            cam.start(seconds=args.process_limit * 20, fps=args.camera_fps, size=args.camera_size)
            cams.append(cam)
    except LookupError as e:
        print(f"no RTSP cameras ({e}): camera rows left out", flush=True)
        stop_cameras(cams)
        return []
    except BaseException:
        stop_cameras(cams)
        raise
    return cams


def stop_cameras(cams: list) -> None:
    for cam in cams:
        if cam.proc is not None:
            cam.kill()


def tables(results: list[Result]) -> list[str]:
    """The results table, the ratio table and the targets at 4 streams (met/missed)."""
    lines = [
        "| source | N | setup | aggregate FPS | per-stream FPS min–max (spread) | p50 / p95 ms | peak RSS MB "
        "| wall s | frames / CPU-s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.source} | {r.n} | {r.mode} | {r.fps:.1f} | {min(r.stream_fps):.1f}–{max(r.stream_fps):.1f} "
            f"({r.spread:.2f}) | {r.p50_ms:.0f} / {r.p95_ms:.0f} | {r.rss_mb:.0f} | {r.wall:.1f} | {r.per_cpu_s:.1f} |"
        )
    lines += [
        "",
        "| source | N | throughput: 1 process / N processes | RSS: 1 process / one 1-stream process "
        "| RSS: N processes / one 1-stream process | frames per CPU-s: 1 process / N processes |",
        "|---|---|---|---|---|---|",
    ]
    verdicts = []
    for source in dict.fromkeys(r.source for r in results):
        rows = {(r.n, r.mode == "1 process"): r for r in results if r.source == source}
        base = rows.get((1, True))
        for n in sorted({n for n, _ in rows}):
            one, sep = rows[(n, True)], rows[(n, False)]
            lines.append(
                f"| {source} | {n} | {one.fps / sep.fps:.2f} | {one.rss_mb / base.rss_mb:.2f} | "
                f"{sep.rss_mb / base.rss_mb:.2f} | {one.per_cpu_s / sep.per_cpu_s:.2f} |"
            )
        if (4, True) in rows:
            one, sep = rows[(4, True)], rows[(4, False)]
            verdicts += [
                f"{source}: 4 streams in one process, aggregate throughput {one.fps / sep.fps:.2f}x four processes "
                f"(target >= {TARGET_THROUGHPUT}): {'met' if one.fps / sep.fps >= TARGET_THROUGHPUT else 'MISSED'}",
                f"{source}: RSS of one 4-stream process {one.rss_mb / base.rss_mb:.2f}x one single-stream process "
                f"(target <= {TARGET_RSS}): {'met' if one.rss_mb / base.rss_mb <= TARGET_RSS else 'MISSED'}",
                f"{source}: per-stream FPS of the 4-stream process max/min {one.spread:.2f} (target <= "
                f"{TARGET_SPREAD:.2f}, within 10 %): {'met' if one.spread <= TARGET_SPREAD else 'MISSED'}",
                f"{source}: for context, frames per CPU-second of one 4-stream process "
                f"{one.per_cpu_s / sep.per_cpu_s:.2f}x four processes' (no target: what a frame costs, whatever share "
                "of a shared machine each setup got)",
            ]
    return lines + [""] + verdicts


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.exit(worker(Path(sys.argv[2]), sys.argv[4:] if sys.argv[3:4] == ["--"] else sys.argv[3:]))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", default="1,2,4,8", help="stream counts, comma-separated (1 always runs)")
    ap.add_argument("--frames", type=int, default=200, help="frames of each file stream")
    ap.add_argument("--camera-seconds", type=float, default=10.0, help="seconds each camera stream is read")
    ap.add_argument("--camera-fps", type=int, default=30)
    ap.add_argument("--camera-size", default="320x240")
    ap.add_argument(
        "--infer-batch", type=int, help="clo-infer --infer-batch for every process (default: clo-infer's own default)"
    )
    ap.add_argument("--process-limit", type=float, default=300.0, help="seconds any one setup may run")
    ap.add_argument("--sources", default="files,cameras", help="which rows: files, cameras or both")
    ap.add_argument("--quick", action="store_true", help="smoke test: N = 1, 2, 30 frames, cameras 3 s")
    args = ap.parse_args()
    if args.quick:
        args.streams, args.frames, args.camera_seconds, args.process_limit = "1,2", 30, 3.0, 120.0
    counts = sorted({1, *(int(n) for n in args.streams.split(","))})  # N = 1: the RSS baseline
    tmp = Path(tempfile.mkdtemp(prefix="clo-bench-streams-"))
    cams: list = []
    try:
        sys.path.insert(0, str(ROOT))
        from clo_export.demo.run import write_demo_video

        t0 = time.perf_counter()
        model = make_model(tmp)
        video = tmp / "demo.mp4"
        write_demo_video(video, args.frames)
        print(
            f"setup (demo model at 256, dynamic batch; {args.frames}-frame 640x480 video): "
            f"{time.perf_counter() - t0:.0f} s",
            flush=True,
        )
        results = []
        for n in counts if "files" in args.sources else ():
            results += run_setup("files", [str(video)] * n, model, args, tmp, args.frames)
        if "cameras" in args.sources:
            cams = start_cameras(max(counts), args)
            frames = int(args.camera_fps * args.camera_seconds)
            for n in counts if cams else ():
                results += run_setup("cameras", [c.url for c in cams[:n]], model, args, tmp, frames)
        print()
        print("\n".join(tables(results)))
        batch = (
            f"--infer-batch {args.infer_batch} for every process"
            if args.infer_batch is not None
            else "each process's default batch (one stream: 1; N streams: one frame of each)"
        )
        print(
            f"\nmachine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; ONNX Runtime CPU, clo-infer's "
            f"default sessions/threads, {batch}, JSON Lines out; cameras "
            f"{args.camera_size} H.264 at {args.camera_fps} fps, {args.camera_seconds:.0f} s per stream"
        )
    finally:
        stop_cameras(cams)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
