"""Typer command-line apps: ``clo-export`` (one module per command) and ``clo-infer``."""
