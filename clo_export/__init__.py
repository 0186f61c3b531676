"""clo-export: YOLOv5 + CloFormer EfficientAttention to verified ONNX, INT8 and TensorRT."""

__version__ = "0.1.0"
