"""Range refinement: each activation range of the chosen Q/DQ model, scaled where that cuts the box error.

A range method (mse by default) picks each tensor's clip from that tensor's own values: the clip with the least
squared rounding and clipping error. What the boxes lose depends on where the tensor sits: on the bundled demo
model the residual stream and the neck's concatenations lose less with a wider clip, a few deep tensors with a
narrower one. So once the float sites are chosen, :func:`refine_ranges` visits every quantized activation in
graph order and tries its range times each of ``FACTORS``; the best factor is kept only when it cuts the box
error of the model built so far *significantly* (``NOISE_Z`` standard errors of the cut, over the images it is
measured on: :func:`clo_export.quantization.sensitivity.gain`), so noise never moves a range. It is measured on
calibration images (the FP32 model's detections on them are the reference), never the held-out ones: the
held-out report stays an independent measurement of the model written.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from clo_export.quantization.accuracy import Measured
from clo_export.quantization.sensitivity import NOISE_Z, gain

FACTORS = (0.9, 1.12)  # of the current range; one sweep, in graph order
REFINE_IMAGES = 128  # calibration images the refinement is measured on (at most)

EvaluateRanges = Callable[[dict[str, float]], Measured]  # activation ranges -> box error on the refinement images
Step = Callable[[int, int], None]  # (tensors done, tensors total)


@dataclass(frozen=True)
class RangeChange:
    """One range that refinement moved, and the box error it cut."""

    tensor: str
    amax_from: float
    amax_to: float
    cut: float  # box error, % (on the refinement images)
    cut_se: float


@dataclass(frozen=True)
class Refinement:
    """The refined ranges, what moved, and the box error before and after on the refinement images."""

    ranges: dict[str, float]
    changes: list[RangeChange]
    box_error_before: float
    box_error_after: float
    n_images: int
    tensors: int  # activation ranges visited
    evaluations: int

    def summary(self) -> str:
        """One line for the CLI and the demo."""
        return (
            f"ranges refined: {len(self.changes)} of {self.tensors} activation ranges moved; box error on "
            f"{self.n_images} calibration images {self.box_error_before:.2f} % -> {self.box_error_after:.2f} %"
        )


def refine_ranges(
    tensors: Sequence[str],
    ranges: dict[str, float],
    evaluate: EvaluateRanges,
    n_images: int,
    factors: Sequence[float] = FACTORS,
    z: float = NOISE_Z,
    step: Step | None = None,
) -> Refinement:
    """One coordinate-descent sweep over ``tensors`` (see the module docstring); ``ranges`` is not changed."""
    current = dict(ranges)
    best = evaluate(current)
    before, changes, evaluations = best.score.box_error, [], 1
    for i, t in enumerate(tensors):
        trials = [(current[t] * f, evaluate({**current, t: current[t] * f})) for f in factors]
        evaluations += len(trials)
        amax, m = min(trials, key=lambda x: x[1].score.box_error)
        cut, se = gain(best, m)
        if cut > 0 and cut >= z * se:
            changes.append(RangeChange(t, current[t], amax, cut, se))
            current[t], best = amax, m
        if step:
            step(i + 1, len(tensors))
    return Refinement(current, changes, before, best.score.box_error, n_images, len(tensors), evaluations)
