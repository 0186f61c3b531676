"""Calibration data, explicit INT8 (Q/DQ) quantization and TensorRT calibrators."""
