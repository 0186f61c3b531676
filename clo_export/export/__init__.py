"""Graph-level ONNX steps: export, static-shape rewrites, simplify, lint, FP16, in-graph NMS, parity.

Metadata lives in clo_export.artifacts."""
