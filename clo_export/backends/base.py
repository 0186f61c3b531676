"""The Runner interface every backend implements (Polygraphy-style); choosing one is backends/select.py.

Nothing is loaded or allocated before :meth:`Runner.activate`, so constructing a runner is
free and ``--help`` never touches a GPU. Feeds and outputs are ``{name: ndarray}`` dicts.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from clo_export.errors import CloExportError


@dataclass(frozen=True)
class TensorSpec:
    """Name, shape (None for a dynamic dimension) and dtype of one model input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: np.dtype


class RunnerGone(CloExportError):
    """The server a runner talks to went away mid-run: the pipeline stops cleanly with what was done."""


class Runner(ABC):
    """Runs a model on one backend; use as a context manager."""

    name = "runner"
    # a dynamic batch dimension takes any size (ONNX Runtime, PyTorch); an engine's profile or a server's
    # max_batch_size bounds it, so there clo-infer batches only as far as --infer-batch asks
    any_batch = False

    def __init__(self) -> None:
        self.is_active = False

    def activate(self) -> Runner:
        """Load the model and allocate what inference needs."""
        if not self.is_active:
            self.activate_impl()
            self.is_active = True
        return self

    def deactivate(self) -> None:
        """Release the model and its buffers."""
        if self.is_active:
            self.deactivate_impl()
            self.is_active = False

    def __enter__(self) -> Runner:
        return self.activate()

    def __exit__(self, exc_type: type | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.deactivate()

    def infer(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: ``{input_name: array}`` in, ``{output_name: array}`` out."""
        if not self.is_active:
            raise CloExportError(f"{self.name} runner used before activate(); use it as `with runner:`")
        return self.infer_impl(feed)

    def input_specs(self) -> list[TensorSpec]:
        """The model's inputs (after activate)."""
        if not self.is_active:
            raise CloExportError(f"{self.name} runner used before activate(); use it as `with runner:`")
        return self.input_specs_impl()

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def input_specs_impl(self) -> list[TensorSpec]: ...
