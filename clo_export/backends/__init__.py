"""Runners: one interface (activate / infer / deactivate) over PyTorch, ONNX Runtime and TensorRT."""
