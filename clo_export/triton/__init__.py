"""Triton Inference Server: model repositories (``clo-export triton``) and the environment they need."""
