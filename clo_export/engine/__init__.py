"""TensorRT engine building: pure version-gated plans (plan.py), the thin builder (build.py), sidecars."""
