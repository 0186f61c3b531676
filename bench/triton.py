"""Benchmark of serving the demo model on a real Triton server against clo-infer in-process (not a test).

In one run, on the same decoded frames of the demo video (640x480):
  - in-process: one loop of clo-export's preprocessing, ONNX Runtime (CPU) and NMS per frame
    (latency per frame), and clo-infer's threaded pipeline over the video (throughput);
  - clo-infer's pipeline with ``--model triton://…`` (4 requests in flight; the server runs the detector);
  - Triton (tritonserver from nvidia-pytriton, ``clo-export triton --platform python``): 1, 4 and 8
    concurrent gRPC clients each sending its share of the frames as raw BGR frames to the ensemble,
    one request at a time; throughput, per-request latency p50/p95, and the dynamic batcher's
    average batch size on the detector (inferences / executions from Triton's statistics API).

Needs ``make triton-env``. Usage:

    python bench/triton.py [--frames 240] [--queue-delay-us 2000] [--clients 1,4,8] [--rounds 2]

Rows are measured in interleaved rounds and each keeps its best round (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clo_export.backends.select import load_runner, load_runners  # noqa: E402
from clo_export.backends.streams import usable_cores  # noqa: E402
from clo_export.data.preprocess import preprocess  # noqa: E402
from clo_export.data.readers import open_source  # noqa: E402
from clo_export.demo.run import BUNDLED_MODEL, write_demo_video  # noqa: E402
from clo_export.pipeline import InferOptions, Pipeline  # noqa: E402
from clo_export.postprocess import Postprocessor  # noqa: E402
from clo_export.triton.config import Serving  # noqa: E402
from clo_export.triton.localserver import LocalServer, ServerEnv  # noqa: E402
from clo_export.triton.repository import RepositoryOptions, write_repository  # noqa: E402

DEADLINE_S = 300.0


def read_frames(video: Path, n: int) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(video))
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    return frames


def in_process_loop(onnx_path: Path, frames: list[np.ndarray]) -> tuple[float, list[float]]:
    """One loop, one ONNX Runtime session: preprocess, infer, NMS + scale per frame; (FPS, latencies s)."""
    runner, info = load_runner(onnx_path, "cpu")
    post = Postprocessor(InferOptions())
    lat = []
    with runner:
        for frame in frames[:5]:  # warm-up
            x, lb = preprocess(frame, info.imgsz)
            post(runner.infer({"images": x}), [lb])
        t0 = time.perf_counter()
        for frame in frames:
            t = time.perf_counter()
            x, lb = preprocess(frame, info.imgsz)
            post(runner.infer({"images": x}), [lb])
            lat.append(time.perf_counter() - t)
        total = time.perf_counter() - t0
    return len(frames) / total, lat


def pipeline_fps(model: str, video: Path, n: int) -> float:
    """clo-infer's threaded pipeline (its default streams) on the video, no sinks: FPS."""
    runners, info = load_runners(model, "cpu" if not model.startswith("triton://") else None)
    for r in runners:
        r.activate()
    try:
        result = Pipeline(open_source(video, n), runners, info, [], InferOptions()).run()
    finally:
        for r in runners:
            r.deactivate()
    return result.fps


def model_counts(client, model: str) -> tuple[int, int]:
    s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def model_counts_url(url: str) -> tuple[int, int]:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        return model_counts(client, "demo_model")
    finally:
        client.close()


def avg_batch(before: tuple[int, int], after: tuple[int, int]) -> str:
    """Frames per detector execution between two statistics readings."""
    return f"{(after[0] - before[0]) / max(after[1] - before[1], 1):.2f}"


def triton_clients(url: str, frames: list[np.ndarray], clients: int) -> tuple[float, list[float], str]:
    """``clients`` threads, each sending its share of the frames one request at a time.

    Returns (FPS, latencies in s, average batch)."""
    import tritonclient.grpc as grpcclient

    admin = grpcclient.InferenceServerClient(url)
    before = model_counts(admin, "demo_model")
    lat: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    stop_at = time.monotonic() + DEADLINE_S

    def loop(k: int) -> None:
        client = grpcclient.InferenceServerClient(url)
        try:
            for i in range(k, len(frames), clients):
                if time.monotonic() > stop_at:
                    raise TimeoutError("benchmark client ran out of time")
                inp = grpcclient.InferInput("FRAME", [1, *frames[i].shape], "UINT8")
                inp.set_data_from_numpy(frames[i][None])
                t = time.perf_counter()
                client.infer("demo", [inp], client_timeout=60.0)
                lat[k].append(time.perf_counter() - t)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=loop, args=(k,)) for k in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    total = time.perf_counter() - t0
    if errors:
        raise errors[0]
    after = model_counts(admin, "demo_model")
    admin.close()
    return len(frames) / total, [x for row in lat for x in row], avg_batch(before, after)


def ms(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1e3, q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=240, help="demo video frames sent per measurement")
    ap.add_argument("--clients", default="1,4,8", help="concurrent clients, comma-separated")
    ap.add_argument("--queue-delay-us", type=int, default=2000, help="dynamic batcher's max queue delay")
    ap.add_argument("--server-env", default=".venv-triton", help="environment made by make triton-env")
    ap.add_argument("--rounds", type=int, default=2, help="interleaved rounds; each row keeps its best")
    args = ap.parse_args()
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load

    with tempfile.TemporaryDirectory(prefix="bench-triton-") as tmp:
        d = Path(tmp)
        loaded = load(BUNDLED_MODEL)
        onnx_path = export_onnx(
            loaded, d / "demo-shapes.onnx", ExportOptions(imgsz=loaded.imgsz_hint or (256, 256), dynamic_batch=True)
        ).path
        write_demo_video(d / "demo.mp4", args.frames)
        frames = read_frames(d / "demo.mp4", args.frames)
        write_repository(
            onnx_path, d / "repo", RepositoryOptions("demo", "python", Serving(8, (4, 8), args.queue_delay_us, 1))
        )
        best: dict[tuple[str, str], tuple] = {}

        def keep(mode: str, clients: str, fps: float, p50, p95, avg: str) -> None:
            if (mode, clients) not in best or fps > best[(mode, clients)][2]:
                best[(mode, clients)] = (mode, clients, fps, p50, p95, avg)

        with LocalServer(d / "repo", d / "server", ServerEnv.find(args.server_env)) as server:
            triton_clients(server.grpc_url, frames[:8], 1)  # warm-up
            for _ in range(args.rounds):
                fps, lat = in_process_loop(onnx_path, frames)
                keep("in-process, one loop", "1", fps, ms(lat, 50), ms(lat, 95), "–")
                keep(
                    "in-process, clo-infer pipeline",
                    "–",
                    pipeline_fps(str(onnx_path), d / "demo.mp4", args.frames),
                    None,
                    None,
                    "–",
                )
                before = model_counts_url(server.grpc_url)
                fps = pipeline_fps(f"triton://{server.grpc_url}/demo", d / "demo.mp4", args.frames)
                keep(
                    "clo-infer --model triton://…/demo (4 requests in flight)",
                    "1",
                    fps,
                    None,
                    None,
                    avg_batch(before, model_counts_url(server.grpc_url)),
                )
                for c in (int(x) for x in args.clients.split(",")):
                    fps, lat, avg = triton_clients(server.grpc_url, frames, c)
                    keep("Triton ensemble, gRPC raw frames", str(c), fps, ms(lat, 50), ms(lat, 95), avg)
        rows = list(best.values())
        base = rows[0][2]
    print(
        f"demo model {loaded.imgsz_hint}, {len(frames)} frames 640x480, {usable_cores()} CPU cores (load average "
        f"{os.getloadavg()[0]:.1f}), queue delay {args.queue_delay_us} us, max batch 8 (preferred 4, 8), "
        f"best of {args.rounds} rounds"
    )
    print("| mode | clients | frames/s | vs in-process loop | p50 ms | p95 ms | avg batch (detector) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for mode, clients, fps, p50, p95, avg in rows:
        p = "–" if p50 is None else f"{p50:.1f}"
        q = "–" if p95 is None else f"{p95:.1f}"
        print(f"| {mode} | {clients} | {fps:.1f} | {fps / base:.2f}x | {p} | {q} | {avg} |")


if __name__ == "__main__":
    main()
