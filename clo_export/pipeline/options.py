"""What a clo-infer run is asked for: the shared thresholds, batching, the live check's cadence, reconnects."""

from __future__ import annotations

import math
from dataclasses import dataclass

from clo_export.data.live import DEFAULT_RECONNECT
from clo_export.errors import CloExportError
from clo_export.thresholds import DEFAULT, Thresholds
from clo_export.validate import at_least


@dataclass(frozen=True)
class InferOptions:
    """Postprocessing thresholds, how frames are batched and checked, and how long a lost live stream is retried."""

    conf: float = DEFAULT.conf
    iou: float = DEFAULT.iou
    max_det: int = DEFAULT.max_det
    classes: tuple[int, ...] | None = None
    agnostic: bool = False
    batch: int | None = None  # frames per inference (clo-infer --infer-batch); None: backends.streams.auto_batch()
    check_every: int = 1
    queue_size: int = 4
    reconnect: float = DEFAULT_RECONNECT  # seconds a lost live stream is retried before the run gives it up (0: never)
    min_f1: float | None = None  # the live check's F1 bar (None: the precision's)

    @property
    def thresholds(self) -> Thresholds:
        """The shared thresholds these options carry."""
        return Thresholds(self.conf, self.iou, self.max_det, self.min_f1)

    def validate(self) -> None:
        """Refuse bad values before any work starts (the thresholds by their one rule)."""
        self.thresholds.validate()
        if not (math.isfinite(self.reconnect) and self.reconnect >= 0):
            raise CloExportError(
                f"--reconnect {self.reconnect} must be a number of seconds >= 0 (0: give a lost live stream up at once)"
            )
        if self.batch is not None:
            at_least("--infer-batch", self.batch, 1)
        at_least("--check-every", self.check_every, 1)
        at_least("queue_size", self.queue_size, 1)
