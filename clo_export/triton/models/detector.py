"""clo-export's detector on Triton's Python backend: the ONNX model beside this file in ONNX Runtime (CPU).

For servers without a GPU. Requests the dynamic batcher groups are stacked into one ONNX Runtime
run (a dynamic-batch ONNX) and split again, so batching works as it does on the ONNX Runtime backend.
"""

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    """One ONNX Runtime session per model instance."""

    def initialize(self, args):
        config = json.loads(args["model_config"])
        p = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        path = Path(args["model_repository"]) / args["model_version"] / "model.onnx"
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        threads = int(p.get("threads", "0"))
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.outputs = [o.name for o in self.session.get_outputs()]

    def execute(self, requests):
        xs = [pb_utils.get_input_tensor_by_name(r, self.input_name).as_numpy() for r in requests]
        results = self.session.run(
            self.outputs, {self.input_name: np.concatenate(xs, axis=0) if len(xs) > 1 else xs[0]}
        )
        responses, start = [], 0
        for x in xs:
            stop = start + len(x)
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor(name, np.ascontiguousarray(out[start:stop]))
                        for name, out in zip(self.outputs, results)
                    ]
                )
            )
            start = stop
        return responses
