"""``config.pbtxt`` for each model of the repository, as protobuf text of Triton's ``ModelConfig``.

The configs are plain dicts rendered by :func:`to_pbtxt`, so writing a repository needs no
protobuf or tritonclient; the tests parse every variant into
``tritonclient.grpc.model_config_pb2.ModelConfig`` and refuse unknown fields.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

# numpy dtype -> Triton data_type
TRITON_TYPES = {
    np.dtype(np.float32): "TYPE_FP32",
    np.dtype(np.float64): "TYPE_FP64",
    np.dtype(np.float16): "TYPE_FP16",
    np.dtype(np.int32): "TYPE_INT32",
    np.dtype(np.int64): "TYPE_INT64",
    np.dtype(np.uint8): "TYPE_UINT8",
    np.dtype(np.int8): "TYPE_INT8",
    np.dtype(np.bool_): "TYPE_BOOL",
}
PARAM_PREFIX = "clo_export."

# Tensor names the ensemble's steps pass on (besides the model's own input and outputs)
IMAGE, FRAME = "IMAGE", "FRAME"  # encoded JPEG/PNG bytes; a raw BGR uint8 frame (H, W, 3)
LETTERBOX = "LETTERBOX"  # ratio, pad x, pad y, original height, original width
DETECTIONS, NUM_DETECTIONS = "DETECTIONS", "NUM_DETECTIONS"


class Sym(str):
    """An enum value, written without quotes (TYPE_FP32, KIND_GPU)."""


@dataclass(frozen=True)
class Tensor:
    """One input or output: name, numpy dtype and dims without the batch dimension (-1: variable)."""

    name: str
    dtype: np.dtype
    dims: tuple[int, ...]
    optional: bool = False

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "name": self.name,
            "data_type": Sym(TRITON_TYPES[np.dtype(self.dtype)]),
            "dims": list(self.dims),
        }
        if self.optional:
            d["optional"] = True
        return d


@dataclass(frozen=True)
class Serving:
    """How Triton schedules a model: batching, queueing and instances."""

    max_batch: int = 1
    preferred_batch: tuple[int, ...] = ()
    queue_delay_us: int = 0
    instances: int = 1
    kind: str | None = None  # gpu | cpu; None: cpu for --platform python, else gpu
    cuda_graphs: bool = True  # TensorRT on the GPU only


def _scalar(v: Any) -> str:
    if isinstance(v, Sym):
        return str(v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v))  # protobuf text accepts C-style escapes, a subset of JSON's


def to_pbtxt(msg: dict[str, Any], indent: int = 0) -> str:
    """Protobuf text of a message given as a dict: dicts are sub-messages, lists of dicts repeated ones."""
    pad = "  " * indent
    lines = []
    for key, value in msg.items():
        if value is None:
            continue
        items = value if isinstance(value, list) and value and all(isinstance(v, dict) for v in value) else None
        if isinstance(value, dict):
            items = [value]
        if items is not None:
            for item in items:
                lines.append(f"{pad}{key} {{\n{to_pbtxt(item, indent + 1)}{pad}}}")
        elif isinstance(value, list):
            lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in value)}]")
        else:
            lines.append(f"{pad}{key}: {_scalar(value)}")
    return "".join(line + "\n" for line in lines)


def parameters(values: dict[str, Any]) -> list[dict[str, Any]]:
    """Config ``parameters`` entries (string values; dicts and lists as JSON)."""
    out = []
    for k, v in values.items():
        text = json.dumps(v) if isinstance(v, (dict, list, tuple, bool)) else str(v)
        out.append({"key": k, "value": {"string_value": text}})
    return out


def _instance_group(count: int, kind: str) -> list[dict[str, Any]]:
    return [{"count": count, "kind": Sym("KIND_GPU" if kind == "gpu" else "KIND_CPU")}]


def _dynamic_batching(s: Serving) -> dict[str, Any] | None:
    if s.max_batch <= 1 and not s.preferred_batch:
        return None
    d: dict[str, Any] = {}
    if s.preferred_batch:
        d["preferred_batch_size"] = list(s.preferred_batch)
    d["max_queue_delay_microseconds"] = s.queue_delay_us
    return d


def model_config(
    name: str, platform: str, inputs: list[Tensor], outputs: list[Tensor], s: Serving, params: dict[str, Any]
) -> dict[str, Any]:
    """The detector's config: ``onnxruntime_onnx``, ``tensorrt_plan`` or the Python backend running ONNX Runtime."""
    cfg: dict[str, Any] = {"name": name}
    if platform == "python":
        cfg["backend"] = "python"
    else:
        cfg["platform"] = platform
    cfg["max_batch_size"] = s.max_batch
    cfg["input"] = [t.to_dict() for t in inputs]
    cfg["output"] = [t.to_dict() for t in outputs]
    cfg["dynamic_batching"] = _dynamic_batching(s)
    cfg["instance_group"] = _instance_group(s.instances, "cpu" if platform == "python" else s.kind)
    if platform == "tensorrt_plan" and s.kind == "gpu" and s.cuda_graphs:
        cuda: dict[str, Any] = {"graphs": True}
        if s.max_batch > 0:  # a non-batching model's one graph needs no spec
            cuda["graph_spec"] = [{"batch_size": b} for b in sorted(set(s.preferred_batch) | {s.max_batch})]
        cfg["optimization"] = {"cuda": cuda}
    cfg["parameters"] = parameters(params)
    return cfg


def python_config(
    name: str, inputs: list[Tensor], outputs: list[Tensor], s: Serving, params: dict[str, Any]
) -> dict[str, Any]:
    """A pre- or postprocessing model on the Python backend (CPU instances, requests handled one by one)."""
    return {
        "name": name,
        "backend": "python",
        "max_batch_size": s.max_batch,
        "input": [t.to_dict() for t in inputs],
        "output": [t.to_dict() for t in outputs],
        "instance_group": _instance_group(s.instances, "cpu"),
        "parameters": parameters(params),
    }


def ensemble_config(
    name: str,
    inputs: list[Tensor],
    outputs: list[Tensor],
    max_batch: int,
    steps: list[tuple[str, dict[str, str], dict[str, str]]],
    params: dict[str, Any],
) -> dict[str, Any]:
    """The ensemble: ``steps`` are (model, {its input: ensemble tensor}, {its output: ensemble tensor})."""
    return {
        "name": name,
        "platform": "ensemble",
        "max_batch_size": max_batch,
        "input": [t.to_dict() for t in inputs],
        "output": [t.to_dict() for t in outputs],
        "ensemble_scheduling": {
            "step": [
                {
                    "model_name": model,
                    "model_version": -1,
                    "input_map": [{"key": k, "value": v} for k, v in ins.items()],
                    "output_map": [{"key": k, "value": v} for k, v in outs.items()],
                }
                for model, ins, outs in steps
            ]
        },
        "parameters": parameters(params),
    }
