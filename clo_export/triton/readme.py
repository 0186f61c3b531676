"""The README written inside a model repository: what is in it, how to start Triton on it, how to query it."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from clo_export import __version__

if TYPE_CHECKING:
    from clo_export.triton.repository import ModelFacts, RepositoryOptions

CONTAINER = "nvcr.io/nvidia/tritonserver:<yy.mm>-py3"


def repository_readme(name: str, out: Path, platform: str, facts: ModelFacts, opts: RepositoryOptions) -> str:
    """Markdown for OUT/README.md."""
    from clo_export.triton.repository import MARK

    h, w = facts.imgsz
    model_file = {"tensorrt_plan": "model.plan", "onnxruntime_onnx": "model.onnx"}.get(
        platform, "model.py + model.onnx"
    )
    gpu = platform != "python" and (opts.serving.kind or "gpu") == "gpu"
    run_flags = "--gpus=1 " if gpu else ""
    nms = f"NMS (conf {opts.conf}, IoU {opts.iou}, max {opts.max_det})"
    needs = "OpenCV, ONNX Runtime" if platform == "python" else "OpenCV"
    plan_note = ""
    if platform == "tensorrt_plan":
        built = facts.extra.get("tensorrt_version", "?")
        plan_note = (
            f"\nThe plan was built with TensorRT {built} on {facts.extra.get('gpu', '?')}. Triton loads a plan only "
            "with the TensorRT it was built with: pick the container release whose TensorRT is "
            f"{built} (NVIDIA's support matrix), or rebuild inside the container with `clo-export trt`.\n"
        )
    return f"""# Triton model repository for {facts.path.name}

<!-- {MARK} {__version__} -->

| model | what it does |
|---|---|
| `{name}` | ensemble: an image in, detections out (the three below in a row) |
| `{name}_preprocess` | Python backend: decode / take the frame, letterbox to {h}x{w} (clo-export's preprocessing) |
| `{name}_model` | the detector, `{platform}` ({model_file}), max batch {opts.serving.max_batch} |
| `{name}_postprocess` | Python backend: {nms}, boxes in original-image pixels |

Inputs of `{name}` (send exactly one): `IMAGE` uint8 `[1, n]`, the bytes of a JPEG/PNG file; or `FRAME`
uint8 `[1, H, W, 3]`, a BGR frame as OpenCV reads it. Outputs: `DETECTIONS` float32 `[1, n, 6]`
(x1, y1, x2, y2, score, class id) and `NUM_DETECTIONS` int32 `[1, 1]`. Class names, input size and the
source model's hash are in each config's `parameters`; thresholds in `{name}_postprocess/config.pbtxt`.
{plan_note}
## Start Triton on it

The Python-backend models need `requirements.txt` ({needs}) in the container:

    docker run --rm {run_flags}--shm-size=1g -p 8000:8000 -p 8001:8001 -p 8002:8002 \\
      -v $PWD/{out.name}:/models {CONTAINER} \\
      bash -c "pip install -r /models/requirements.txt && tritonserver --model-repository=/models"

## Query it

    pip install "clo-export[triton]"
    clo-infer video.mp4 --model triton://localhost:8001/{name} --save out.mp4

or with tritonclient alone:

    import cv2, numpy as np, tritonclient.grpc as grpcclient
    client = grpcclient.InferenceServerClient("localhost:8001")
    data = np.frombuffer(open("image.jpg", "rb").read(), np.uint8)[None]
    inp = grpcclient.InferInput("IMAGE", list(data.shape), "UINT8")
    inp.set_data_from_numpy(data)
    res = client.infer("{name}", [inp])
    n = int(res.as_numpy("NUM_DETECTIONS")[0, 0])
    print(res.as_numpy("DETECTIONS")[0, :n])
"""
