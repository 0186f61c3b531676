"""clo-export postprocessing on Triton's Python backend.

In: the detector's outputs (``output0``, or an in-graph NMS model's ``num_dets``/``boxes``/``scores``/
``classes``) and ``LETTERBOX`` from the preprocessing model. Out: ``DETECTIONS`` (B, n, 6) rows
[x1, y1, x2, y2, conf, cls] in original-image pixels (zero rows past each image's count) and
``NUM_DETECTIONS`` (B, 1). clo-export's NMS and box scaling, copied beside this file; thresholds
from this model's config parameters.
"""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the clo_export modules copied beside this file

from clo_export.data.preprocess import LetterboxInfo  # noqa: E402
from clo_export.postprocess import NMS_OUTPUTS, Postprocessor  # noqa: E402


class TritonPythonModel:
    """NMS (or the in-graph NMS's rows) mapped back onto the original image."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        thresholds = SimpleNamespace(
            conf=float(p["conf"]),
            iou=float(p["iou"]),
            max_det=int(p["max_det"]),
            classes=None,
            agnostic=json.loads(p["agnostic"]),
        )  # what Postprocessor reads
        self.post = Postprocessor(thresholds)
        self.inputs = NMS_OUTPUTS if json.loads(p["clo_export.nms"]) else ("output0",)
        self.imgsz = tuple(json.loads(p["clo_export.imgsz"]))

    def _one(self, request):
        outs = {k: pb_utils.get_input_tensor_by_name(request, k).as_numpy() for k in self.inputs}
        boxes = pb_utils.get_input_tensor_by_name(request, "LETTERBOX").as_numpy()
        infos = [
            LetterboxInfo(float(ratio), (int(px), int(py)), (int(h), int(w)), self.imgsz)
            for ratio, px, py, h, w in boxes
        ]
        dets = self.post(outs, infos)
        most = max([len(d) for d in dets] + [0])
        out = np.zeros((len(dets), most, 6), dtype=np.float32)
        for i, d in enumerate(dets):
            out[i, : len(d)] = d
        num = np.asarray([[len(d)] for d in dets], dtype=np.int32)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor("DETECTIONS", out), pb_utils.Tensor("NUM_DETECTIONS", num)]
        )

    def execute(self, requests):
        return [self._one(r) for r in requests]
