"""The detection thresholds every step shares (score, NMS IoU, detections kept, a check's F1 bar): written once.

Export (``--nms``), inference, the checks, the demo and Triton's postprocessing take their defaults and
their one range rule from here. Imports only errors.py: Triton's postprocessing model vendors it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Optional

from clo_export.errors import CloExportError


def check_unit(option: str, value: Optional[float]) -> None:
    """Refuse a fraction outside [0, 1] (the one rule for --conf, --iou and --min-f1 in every command; None: unset)."""
    if value is not None and not 0 <= value <= 1:  # NaN fails too
        raise CloExportError(f"{option} {value} must lie in [0, 1]")


@dataclass(frozen=True)
class Thresholds:
    """Score threshold, NMS IoU and detections kept per image; ``min_f1``: the detection F1 a check must reach
    (None: the precision's bar in ``clo_export.report.TOLERANCES``)."""

    conf: float = 0.25
    iou: float = 0.45
    max_det: int = 300
    min_f1: Optional[float] = None

    def validate(self) -> None:
        """conf, iou and min_f1 in [0, 1]; max_det a whole number >= 1."""
        check_unit("--conf", self.conf)
        check_unit("--iou", self.iou)
        if int(self.max_det) != self.max_det or self.max_det < 1:
            raise CloExportError(f"--max-det {self.max_det} must be at least 1")
        check_unit("--min-f1", self.min_f1)

    def for_model(self, model: Any) -> Thresholds:
        """The graph's own thresholds for a model with in-graph NMS (these where it has none or leaves one unset).

        ``model`` is anything with ``nms``, ``nms_conf``, ``nms_iou`` and ``nms_max_det``: a ModelInfo or
        the export's ModelMeta.
        """
        if not model.nms:
            return self
        return replace(
            self,
            conf=self.conf if model.nms_conf is None else model.nms_conf,
            iou=self.iou if model.nms_iou is None else model.nms_iou,
            max_det=model.nms_max_det or self.max_det,
        )


DEFAULT = Thresholds()
