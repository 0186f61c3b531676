"""Triton client runner: ``clo-infer SOURCE --model triton://host:port/name`` runs the detector on a server.

The pipeline still decodes, preprocesses, postprocesses and writes here; the server runs the
detector (``NAME_model`` of a ``clo-export triton`` repository, found through the ensemble's
parameters, or any model that takes the letterboxed image). Class names, input size and precision
come from the config's parameters, so ``--check``, sinks and stats work as with a local model.
Several runners are several requests in flight, which the server's dynamic batcher can batch.
tritonclient is imported lazily (``pip install "clo-export[triton]"``).
"""

from __future__ import annotations

import json
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from clo_export.artifacts import ModelInfo
from clo_export.backends.base import Runner, RunnerGone, TensorSpec
from clo_export.errors import CloExportError

SCHEME = "triton://"
DEFAULT_PORT = 8001
DEFAULT_STREAMS = 4  # requests in flight
INSTALL = 'pip install "tritonclient[grpc]"  (or pip install "clo-export[triton]")'
_TYPES = {
    "TYPE_FP32": np.float32,
    "TYPE_FP16": np.float16,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT8": np.int8,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_FP64": np.float64,
}
_URL = re.compile(r"^triton://(?P<host>[^/:]+|\[[^\]]+\])(?::(?P<port>\d+))?/(?P<model>[A-Za-z0-9][A-Za-z0-9_.-]*)/?$")


def is_triton_url(model: object) -> bool:
    """Whether a --model value names a model on a Triton server."""
    return str(model).startswith(SCHEME)


def parse_url(url: str) -> Tuple[str, str]:
    """``triton://host[:port]/name`` -> ("host:port", "name")."""
    m = _URL.match(url)
    if not m:
        raise CloExportError(
            f"'{url}' is not a Triton model address; use triton://host:port/name (gRPC port, default {DEFAULT_PORT})"
        )
    if m.group("port") is not None and not 1 <= int(m.group("port")) <= 65535:
        raise CloExportError(
            f"'{url}': port {m.group('port')} is out of range; TCP ports are 1 to 65535 "
            f"(Triton's gRPC port is {DEFAULT_PORT} unless the server was started with another)"
        )
    return f"{m.group('host')}:{m.group('port') or DEFAULT_PORT}", m.group("model")


def _grpc() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as e:
        raise CloExportError(f"--model triton://… needs tritonclient ({e}); install it: {INSTALL}") from e
    return grpcclient


def _first_line(e: BaseException) -> str:
    text = getattr(e, "message", None)
    text = text() if callable(text) else (text or str(e))
    return (str(text).strip().splitlines() or [type(e).__name__])[0]


class TritonRunner(Runner):
    """Sends the letterboxed batch to one model on a Triton server over gRPC and returns its outputs."""

    name = "triton"

    def __init__(self, address: str, model: str, inputs: List[TensorSpec], outputs: List[str], timeout: float = 60.0):
        super().__init__()
        self.address = address
        self.model = model
        self._inputs = list(inputs)
        self.outputs = list(outputs)
        self.timeout = timeout
        self.client: Any = None

    def activate_impl(self) -> None:
        self.client = _grpc().InferenceServerClient(self.address)

    def deactivate_impl(self) -> None:
        if self.client is not None:
            self.client.close()
        self.client = None

    def input_specs_impl(self) -> List[TensorSpec]:
        return list(self._inputs)

    def infer_impl(self, feed: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        grpcclient = _grpc()
        inputs = []
        for spec in self._inputs:
            x = np.ascontiguousarray(feed[spec.name], dtype=spec.dtype)
            inp = grpcclient.InferInput(spec.name, list(x.shape), _triton_dtype(spec.dtype))
            inp.set_data_from_numpy(x)
            inputs.append(inp)
        wanted = [grpcclient.InferRequestedOutput(n) for n in self.outputs]
        try:
            result = self.client.infer(self.model, inputs, outputs=wanted, client_timeout=self.timeout)
        except Exception as e:  # InferenceServerException, or grpc's own on a dropped connection
            if not self._server_ready():
                raise RunnerGone(f"the Triton server at {self.address} went away ({_first_line(e)})") from e
            raise CloExportError(
                f"Triton model '{self.model}' at {self.address} refused a request: {_first_line(e)}"
            ) from e
        return {n: result.as_numpy(n) for n in self.outputs}

    def _server_ready(self) -> bool:
        try:  # a server shutting down is live but no longer ready
            return bool(self.client.is_server_ready(client_timeout=2.0))
        except Exception:  # noqa: BLE001 (any failure means it is not there)
            return False


def _triton_dtype(dtype: np.dtype) -> str:
    from tritonclient.utils import np_to_triton_dtype

    return np_to_triton_dtype(np.dtype(dtype))


def _params(config: Dict[str, Any]) -> Dict[str, str]:
    return {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}


def _config(client: Any, address: str, model: str) -> Dict[str, Any]:
    from tritonclient.utils import InferenceServerException

    try:
        return client.get_model_config(model, as_json=True, client_timeout=10.0)["config"]
    except InferenceServerException as e:
        try:
            served = sorted(m["name"] for m in client.get_model_repository_index(as_json=True).get("models", []))
        except InferenceServerException:
            served = []
        raise CloExportError(
            f"Triton at {address} has no ready model '{model}' ({_first_line(e)}); it serves: "
            f"{', '.join(served) or 'nothing'}"
        ) from e


def connect(url: str) -> Tuple[str, str, Dict[str, Any]]:
    """Check the server answers and resolve the detector: (address, model name, its config as a dict)."""
    address, model = parse_url(url)
    client = _grpc().InferenceServerClient(address)
    try:
        try:
            live = client.is_server_ready(client_timeout=5.0)
        except Exception as e:  # noqa: BLE001 (connection refused, DNS, timeout: all one line)
            raise CloExportError(
                f"cannot reach a Triton server at {address} ({_first_line(e)}); start it or fix the address in {url}"
            ) from e
        if not live:
            raise CloExportError(
                f"the Triton server at {address} is not ready (models still loading or failed); see its log"
            )
        config = _config(client, address, model)
        if config.get("platform") == "ensemble":
            inner = _params(config).get("clo_export.model")
            if not inner:
                raise CloExportError(
                    f"'{model}' is an ensemble clo-export did not write; pass the detector model's "
                    "name (the one that takes the letterboxed image)"
                )
            model, config = inner, _config(client, address, inner)
        return address, model, config
    finally:
        client.close()


def load_triton_runners(
    url: str, workers: Optional[int] = None, imgsz: Optional[Tuple[int, int]] = None
) -> Tuple[List[Runner], ModelInfo]:
    """Runners (``workers`` requests in flight, default 4) for a model on a Triton server, and its ModelInfo."""
    if workers is not None and workers < 1:
        raise CloExportError(f"--workers {workers} must be at least 1")
    address, model, config = connect(url)
    inputs = config.get("input", [])
    if len(inputs) != 1:
        raise CloExportError(f"Triton model '{model}' has {len(inputs)} inputs; clo-infer sends one letterboxed image")
    spec = inputs[0]
    dims = tuple(int(d) for d in spec.get("dims", []))
    batched = int(config.get("max_batch_size", 0)) > 0
    shape = ((None,) if batched else ()) + tuple(d if d >= 0 else None for d in dims)
    if len(shape) != 4 or shape[2] is None or shape[3] is None:
        raise CloExportError(
            f"Triton model '{model}' takes {spec.get('name')} of dims {list(dims)}; clo-infer needs a "
            "fixed-size image input (serve a clo-export model)"
        )
    dtype = np.dtype(_TYPES.get(spec.get("data_type", "TYPE_FP32"), np.float32))
    p = _params(config)
    size = tuple(json.loads(p["clo_export.imgsz"])) if "clo_export.imgsz" in p else (shape[2], shape[3])
    if imgsz is not None and tuple(imgsz) != tuple(size):
        raise CloExportError(f"'{url}' takes {size[0]}x{size[1]} inputs only; drop --imgsz")
    names = {int(k): v for k, v in json.loads(p.get("clo_export.names", "{}")).items()}
    nms = json.loads(p.get("clo_export.nms", "false"))
    outputs = (
        ["num_dets", "boxes", "scores", "classes"]
        if nms
        else [o["name"] for o in config.get("output", [])] or ["output0"]
    )
    info = ModelInfo(
        url,
        "triton",
        names,
        (int(size[0]), int(size[1])),
        int(p.get("clo_export.stride", 32)),
        p.get("clo_export.precision", "fp32"),
        bool(nms),
    )
    tensor = TensorSpec(spec["name"], shape, dtype)
    return [TritonRunner(address, model, [tensor], outputs) for _ in range(workers or DEFAULT_STREAMS)], info
