"""Runners: one interface (base.py: activate / infer / deactivate) over PyTorch, ONNX Runtime, TensorRT and Triton.

select.py picks one for a model file."""
