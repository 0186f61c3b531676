"""TensorRT engines: pure version-gated plans (plan.py), the pre-flight check (preflight.py), the library step
over Polygraphy (build.py), the engine sidecar."""
