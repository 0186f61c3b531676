"""Test-only: ONNX Runtime sessions without graph optimizations, for tests/test_python_matrix.py.

ONNX Runtime's graph rewrites (Q/DQ fusions above all) differ between releases, and Python 3.8's newest
onnxruntime (1.19) is older than the main environment's, so INT8 outputs differ by release, not by
anything clo-export does. With the rewrites off every release computes the ONNX graph as written, and
the matrix compares what it is meant to: our code on each interpreter with its numpy and OpenCV.
"""

import onnxruntime as _ort

_InferenceSession = _ort.InferenceSession


def _unoptimized(path_or_bytes, sess_options=None, *args, **kwargs):
    options = sess_options if sess_options is not None else _ort.SessionOptions()
    options.graph_optimization_level = _ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return _InferenceSession(path_or_bytes, options, *args, **kwargs)


_ort.InferenceSession = _unoptimized
