"""Calibration data, explicit INT8 (Q/DQ) quantization and TensorRT calibrators (installed as clo_export.quantization)."""
