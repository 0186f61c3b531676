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

import numpy as np
import triton_python_backend_utils as pb_utils

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the clo_export modules copied beside this file

from clo_export.data.preprocess import LetterboxInfo, scale_boxes  # noqa: E402
from clo_export.postprocess import detections_from_nms_outputs, nms  # noqa: E402

NMS_OUTPUTS = ("num_dets", "boxes", "scores", "classes")


class TritonPythonModel:
    """NMS (or the in-graph NMS's rows) mapped back onto the original image."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        self.conf = float(p["conf"])
        self.iou = float(p["iou"])
        self.max_det = int(p["max_det"])
        self.agnostic = json.loads(p["agnostic"])
        self.in_graph_nms = json.loads(p["clo_export.nms"])
        self.imgsz = tuple(json.loads(p["clo_export.imgsz"]))

    def _letterboxed(self, request):
        if self.in_graph_nms:
            outs = {k: pb_utils.get_input_tensor_by_name(request, k).as_numpy() for k in NMS_OUTPUTS}
            dets = detections_from_nms_outputs(outs)
            return [d[d[:, 4] >= self.conf][: self.max_det] for d in dets]
        pred = pb_utils.get_input_tensor_by_name(request, "output0").as_numpy()
        return nms(pred, self.conf, self.iou, agnostic=self.agnostic, max_det=self.max_det)

    def _one(self, request):
        boxes = pb_utils.get_input_tensor_by_name(request, "LETTERBOX").as_numpy()
        dets = []
        for d, (ratio, px, py, h, w) in zip(self._letterboxed(request), boxes):
            info = LetterboxInfo(float(ratio), (int(px), int(py)), (int(h), int(w)), self.imgsz)
            dets.append(scale_boxes(d, info) if len(d) else d)
        most = max([len(d) for d in dets] + [0])
        out = np.zeros((len(dets), most, 6), dtype=np.float32)
        for i, d in enumerate(dets):
            out[i, : len(d)] = d
        num = np.asarray([[len(d)] for d in dets], dtype=np.int32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("DETECTIONS", out),
                                                          pb_utils.Tensor("NUM_DETECTIONS", num)])

    def execute(self, requests):
        return [self._one(r) for r in requests]
