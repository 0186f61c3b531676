"""Model assembly from YAML and checkpoint loading (imports torch)."""
