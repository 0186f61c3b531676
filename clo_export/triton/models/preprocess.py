"""clo-export preprocessing on Triton's Python backend.

In: ``IMAGE`` (encoded JPEG/PNG bytes as a uint8 vector) or ``FRAME`` (a raw BGR uint8 frame, H×W×3),
exactly one per request. Out: ``images``, the letterboxed tensor the detector takes (clo-export's
one preprocessing function, copied beside this file), and ``LETTERBOX`` (ratio, pad x, pad y,
original height, original width; float64 so boxes map back exactly) for the postprocessing model.
"""

import json
import sys
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the clo_export modules copied beside this file

import cv2  # noqa: E402

from clo_export.data.preprocess import preprocess  # noqa: E402
from clo_export.errors import CloExportError  # noqa: E402


def _params(args):
    config = json.loads(args["model_config"])
    return {k: v["string_value"] for k, v in config.get("parameters", {}).items()}


class TritonPythonModel:
    """Decodes or takes frames and letterboxes them."""

    def initialize(self, args):
        p = _params(args)
        self.imgsz = tuple(json.loads(p["clo_export.imgsz"]))
        self.dtype = np.dtype(p["clo_export.input_dtype"])
        self.input_name = p["clo_export.input_name"]

    def _frames(self, request):
        encoded = pb_utils.get_input_tensor_by_name(request, "IMAGE")
        raw = pb_utils.get_input_tensor_by_name(request, "FRAME")
        if (encoded is None) == (raw is None):
            raise CloExportError(
                "send exactly one of IMAGE (encoded JPEG/PNG bytes as uint8) or FRAME (BGR uint8 H x W x 3)"
            )
        if raw is not None:
            return list(raw.as_numpy())
        frames = []
        for buf in encoded.as_numpy():
            img = cv2.imdecode(np.ascontiguousarray(buf, dtype=np.uint8), cv2.IMREAD_COLOR)
            if img is None:
                raise CloExportError(f"IMAGE holds {buf.size} bytes that are not a JPEG or PNG OpenCV can decode")
            frames.append(img)
        return frames

    def _one(self, request):
        try:
            xs, boxes = [], []
            for img in self._frames(request):
                x, lb = preprocess(np.ascontiguousarray(img), self.imgsz, self.dtype)
                xs.append(x)
                boxes.append([lb.ratio, lb.pad[0], lb.pad[1], lb.orig_shape[0], lb.orig_shape[1]])
        except CloExportError as e:
            return pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        return pb_utils.InferenceResponse(
            output_tensors=[
                pb_utils.Tensor(self.input_name, np.concatenate(xs, axis=0)),
                pb_utils.Tensor("LETTERBOX", np.asarray(boxes, dtype=np.float64)),
            ]
        )

    def execute(self, requests):
        return [self._one(r) for r in requests]
