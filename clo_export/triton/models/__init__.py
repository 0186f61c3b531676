"""Python-backend model files copied into a repository as ``model.py`` (run by Triton, not imported here)."""
