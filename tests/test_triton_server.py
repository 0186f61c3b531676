"""A real Triton server: the demo model's ``--platform python`` repository on tritonserver from PyPI's
nvidia-pytriton wheel (Apache-2.0), started on 127.0.0.1 on free ports from ``.venv-triton``
(``make triton-env``; numpy < 2 there for the Python backend stub).

If the server cannot start, these tests fail with the server's log tail: they never skip.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from typer.testing import CliRunner

from clo_export.backends.select import load_runners
from clo_export.cli.infer import app as infer_app
from clo_export.cli.main import app
from clo_export.data.readers import open_source
from clo_export.data.sinks import JsonlSink, MemorySink, VideoSink
from clo_export.demo.run import BUNDLED_MODEL, write_demo_video
from clo_export.errors import CloExportError
from clo_export.pipeline import InferOptions, Pipeline
from clo_export.triton.localserver import LocalServer, ServerEnv

ROOT = Path(__file__).resolve().parent.parent
SERVER_ENV = Path(os.environ.get("CLO_TRITON_ENV", ROOT / ".venv-triton"))
N_FRAMES = 60
CLIENTS = 4
DEADLINE_S = 60.0  # every request loop is bounded in count and in time

pytestmark = [pytest.mark.server, pytest.mark.slow]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The demo model as a dynamic-batch ONNX, the demo video, and its --platform python repository."""
    from clo_export.export.exporter import ExportOptions, export_onnx
    from clo_export.models.checkpoint import load

    d = tmp_path_factory.mktemp("triton")
    loaded = load(BUNDLED_MODEL)
    onnx_path = export_onnx(
        loaded, d / "demo-shapes.onnx", ExportOptions(imgsz=loaded.imgsz_hint or (256, 256), dynamic_batch=True)
    ).path
    write_demo_video(d / "demo.mp4", N_FRAMES)
    r = CliRunner().invoke(
        app,
        [
            "triton",
            str(onnx_path),
            "-o",
            str(d / "repo"),
            "--name",
            "demo",
            "--platform",
            "python",
            "--max-batch",
            "8",
            "--preferred-batch",
            "4,8",
            "--queue-delay-us",
            "2000",
        ],
    )
    assert r.exit_code == 0, r.output
    cap = cv2.VideoCapture(str(d / "demo.mp4"))
    frames = []
    while len(frames) < N_FRAMES:
        ok, frame = cap.read()
        assert ok, "demo video shorter than written"
        frames.append(frame)
    cap.release()
    return SimpleNamespace(dir=d, onnx=onnx_path, video=d / "demo.mp4", repo=d / "repo", frames=frames)


def start_server(repo: Path, scratch: Path) -> LocalServer:
    """tritonserver on 127.0.0.1, ready, or a failed test with its log tail."""
    try:
        return LocalServer(repo, scratch, ServerEnv.find(SERVER_ENV)).start()
    except CloExportError as e:
        pytest.fail(f"Triton server did not start: {e}")


@pytest.fixture(scope="module")
def server(demo, art):
    """One server for the demo ensemble and, beside it, an in-graph NMS model's ensemble ``nms``."""
    r = CliRunner().invoke(
        app, ["triton", str(art.nms_onnx), "-o", str(demo.repo), "--name", "nms", "--platform", "python"]
    )
    assert r.exit_code == 0, r.output
    s = start_server(demo.repo, demo.dir / "server")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def in_process(demo):
    """clo-infer's pipeline in this process (ONNX Runtime, CPU) on the demo video: detections per frame."""
    runners, info = load_runners(demo.onnx, "cpu")
    sink = MemorySink()
    with runners[0], runners[1]:
        Pipeline(open_source(demo.video), runners, info, [sink], InferOptions(conf=0.25, iou=0.45)).run()
    assert len(sink.detections) == N_FRAMES and sum(len(d) for d in sink.detections.values()) > 0
    return sink.detections


def _ask(client, index: int, frame: np.ndarray, encoded: bool):
    if encoded:
        ok, png = cv2.imencode(".png", frame)  # lossless: the server decodes the very same pixels
        data, name = png.reshape(1, -1), "IMAGE"
    else:
        data, name = frame[None], "FRAME"
    inp = grpcclient.InferInput(name, list(data.shape), "UINT8")
    inp.set_data_from_numpy(np.ascontiguousarray(data))
    res = client.infer("demo", [inp], request_id=str(index), client_timeout=30.0)
    n = int(res.as_numpy("NUM_DETECTIONS")[0, 0])
    return res.get_response().id, res.as_numpy("DETECTIONS")[0, :n]


def _stats(client, model: str) -> tuple[int, int]:
    s = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(s.get("inference_count", 0)), int(s.get("execution_count", 0))


def test_four_concurrent_clients_get_in_process_detections(demo, server, in_process):
    admin = grpcclient.InferenceServerClient(server.grpc_url)
    before = {m: _stats(admin, m) for m in ("demo", "demo_model")}
    answers: dict[int, list] = {k: [] for k in range(CLIENTS)}
    errors: list[BaseException] = []
    stop_at = time.monotonic() + DEADLINE_S

    def client_loop(k: int) -> None:
        client = grpcclient.InferenceServerClient(server.grpc_url)
        try:
            for i in range(k, N_FRAMES, CLIENTS):  # each client sends its frames in order, one at a time
                if time.monotonic() > stop_at:
                    raise TimeoutError(f"client {k} ran past {DEADLINE_S:.0f} s")
                answers[k].append((i, *_ask(client, i, demo.frames[i], encoded=k == CLIENTS - 1)))
        except BaseException as e:  # noqa: BLE001 (reported by the main thread)
            errors.append(e)
        finally:
            client.close()

    threads = [threading.Thread(target=client_loop, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(DEADLINE_S + 10)
    assert not errors, errors[0]
    for k, got in answers.items():
        sent = list(range(k, N_FRAMES, CLIENTS))
        assert [i for i, _, _ in got] == sent  # nothing lost
        assert [rid for _, rid, _ in got] == [str(i) for i in sent]  # each answer is its own request's, in order
        for i, _, dets in got:
            assert dets.dtype == np.float32
            np.testing.assert_array_equal(dets, in_process[i], err_msg=f"frame {i} (client {k})")
    after = {m: _stats(admin, m) for m in ("demo", "demo_model")}
    assert after["demo"][0] - before["demo"][0] == N_FRAMES
    assert after["demo_model"][0] - before["demo_model"][0] == N_FRAMES  # every frame reached the detector once
    admin.close()


def test_clo_infer_against_the_server_matches_in_process(demo, server, tmp_path):
    runner = CliRunner()
    local = runner.invoke(
        infer_app, [str(demo.video), "--model", str(demo.onnx), "--json", str(tmp_path / "local.jsonl"), "-q"]
    )
    assert local.exit_code == 0, local.output
    remote = runner.invoke(
        infer_app,
        [
            str(demo.video),
            "--model",
            f"triton://{server.grpc_url}/demo",
            "--json",
            str(tmp_path / "triton.jsonl"),
            "--save",
            str(tmp_path / "triton.mp4"),
            "--infer-batch",
            "4",
            "--check",
            str(BUNDLED_MODEL),
            "--check-every",
            "15",
            "-q",
        ],
    )
    assert remote.exit_code == 0, remote.output
    assert "triton, batch 4, 4 streams" in remote.output  # the stats table
    assert "check: within tolerance" in remote.output  # --check compares the served model with PyTorch
    assert (tmp_path / "triton.jsonl").read_text() == (tmp_path / "local.jsonl").read_text()
    cap = cv2.VideoCapture(str(tmp_path / "triton.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == N_FRAMES
    cap.release()


def test_in_graph_nms_model_through_its_ensemble(server, art):
    runners, info = load_runners(art.nms_onnx, "cpu")
    sink = MemorySink()
    with runners[0], runners[1]:
        Pipeline(open_source(art.video), runners, info, [sink], InferOptions()).run()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    cap = cv2.VideoCapture(str(art.video))
    for i in range(len(sink.detections)):
        ok, frame = cap.read()
        assert ok
        inp = grpcclient.InferInput("FRAME", [1, *frame.shape], "UINT8")
        inp.set_data_from_numpy(frame[None])
        res = client.infer("nms", [inp], client_timeout=30.0)
        n = int(res.as_numpy("NUM_DETECTIONS")[0, 0])
        np.testing.assert_array_equal(res.as_numpy("DETECTIONS")[0, :n], sink.detections[i], err_msg=f"frame {i}")
    cap.release()
    client.close()
    assert sum(len(d) for d in sink.detections.values()) > 0


def test_connection_failures_are_one_line(demo, server):
    runner = CliRunner()
    r = runner.invoke(infer_app, [str(demo.video), "--model", "triton://127.0.0.1:1/demo", "-q"])
    assert r.exit_code == 1 and "cannot reach a Triton server at 127.0.0.1:1" in r.output
    r = runner.invoke(infer_app, [str(demo.video), "--model", f"triton://{server.grpc_url}/nope", "-q"])
    assert r.exit_code == 1 and "no ready model 'nope'" in r.output and "demo_model" in r.output
    r = runner.invoke(infer_app, [str(demo.video), "--model", "triton://host/", "-q"])
    assert r.exit_code == 1 and "triton://host:port/name" in r.output


def test_server_shuts_down_cleanly(server):
    assert server.stop() == 0
    log = server.log_path.read_text()
    for model in ("demo", "demo_preprocess", "demo_model", "demo_postprocess", "nms", "nms_model"):
        assert f"successfully unloaded '{model}'" in log


def test_server_that_dies_mid_stream_stops_the_run_with_outputs_done_so_far(demo, in_process, tmp_path):
    server = start_server(demo.repo, tmp_path / "server")
    try:
        runners, info = load_runners(f"triton://{server.grpc_url}/demo")
        memory = MemorySink()
        sinks = [
            memory,
            JsonlSink(tmp_path / "out.jsonl", info.names),
            VideoSink(tmp_path / "out.mp4", 30.0, (640, 480)),
        ]

        def on_frame(n: int, _dets: int) -> None:
            if n == 8:
                server.kill()

        for r in runners:
            r.activate()
        try:
            result = Pipeline(open_source(demo.video), runners, info, sinks, InferOptions(), None, on_frame).run()
        finally:
            for r in runners:
                r.deactivate()
    finally:
        server.stop()
    assert result.gone and "went away" in result.gone
    assert 8 <= result.frames < N_FRAMES
    assert sorted(memory.detections) == list(range(result.frames))  # a prefix of the video, no gaps
    for i, dets in memory.detections.items():
        np.testing.assert_array_equal(dets, in_process[i])
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == result.frames
    cap = cv2.VideoCapture(str(tmp_path / "out.mp4"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == result.frames  # closed and playable
    cap.release()
