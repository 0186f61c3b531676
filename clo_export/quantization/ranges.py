"""Activation ranges from calibration: streaming |x| histograms, and amax by MSE, entropy, percentile or min/max.

Symmetric INT8 needs one number per tensor, ``amax`` (scale = amax / 127). The entropy method is
TensorRT's (IInt8EntropyCalibrator2, also pytorch-quantization's): choose the clip threshold whose
128-level quantized histogram has the least KL divergence from the clipped original. The MSE
method chooses the clip point with the least expected squared error after symmetric INT8
rounding and clipping; it keeps more of the fine detail the Detect head's box outputs need
(on the demo data it loses a third of entropy's mAP@.5:.95).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from clo_export.errors import CloExportError

METHODS = ("mse", "entropy", "minmax", "percentile")
NUM_BINS = 2048
PERCENTILE = 99.99


@dataclass
class AbsHistogram:
    """Histogram of |x| with a fixed bin width that grows (more bins) when a larger value arrives."""

    width: float = 0.0
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    amax: float = 0.0
    num_bins: int = NUM_BINS

    def add(self, x: np.ndarray) -> None:
        a = np.abs(np.asarray(x, dtype=np.float32)).ravel()
        if not a.size:
            return
        m = float(a.max())
        if not np.isfinite(m):
            raise CloExportError("calibration saw inf/NaN activations; check the FP32 model on these images")
        self.amax = max(self.amax, m)
        if self.width == 0.0:
            if m == 0.0:
                self.counts = np.zeros(1, dtype=np.int64) if not self.counts.size else self.counts
                self.counts[0] += a.size
                return
            self.width = m / self.num_bins
            zeros = int(self.counts[0]) if self.counts.size else 0
            self.counts = np.zeros(self.num_bins, dtype=np.int64)
            self.counts[0] = zeros
        need = int(np.ceil(m / self.width))
        if need > len(self.counts):
            self.counts = np.concatenate([self.counts, np.zeros(need - len(self.counts), dtype=np.int64)])
        while len(self.counts) > 8 * self.num_bins:  # bound memory: double the bin width
            self.counts = np.add.reduceat(self.counts, np.arange(0, len(self.counts), 2))
            self.width *= 2
        idx = np.minimum((a / self.width).astype(np.int64), len(self.counts) - 1)
        self.counts += np.bincount(idx, minlength=len(self.counts))

    def rebinned(self) -> tuple[np.ndarray, float]:
        """Counts merged to at most ``num_bins`` bins and the resulting bin width."""
        counts, width = self.counts, self.width
        factor = int(np.ceil(len(counts) / self.num_bins)) if len(counts) else 1
        if factor > 1:
            pad = (-len(counts)) % factor
            counts = np.concatenate([counts, np.zeros(pad, dtype=counts.dtype)]).reshape(-1, factor).sum(1)
            width *= factor
        return counts, width


def _kl(p: np.ndarray, q: np.ndarray) -> float:
    """KL(p || q) of unnormalised histograms; inf where p has mass that q lacks."""
    p = p / p.sum()
    q = q / q.sum()
    nz = p > 0
    if np.any(q[nz] == 0):
        return float("inf")
    return float(np.sum(p[nz] * np.log(p[nz] / q[nz])))


def _divergence(counts: np.ndarray, tail: np.ndarray, i: int, levels: int) -> float:
    """KL divergence of clipping at bin ``i`` and quantizing the clipped histogram to ``levels`` levels."""
    p = counts[:i].copy()
    p[i - 1] += tail[i]  # outliers clipped into the last bin
    starts = np.unique(np.floor(np.linspace(0, i, levels + 1)[:-1]).astype(np.int64))
    sums = np.add.reduceat(counts[:i], starts)
    nonzero = np.add.reduceat((counts[:i] > 0).astype(np.float64), starts)
    lengths = np.diff(np.append(starts, i))
    q = np.repeat(np.divide(sums, nonzero, out=np.zeros_like(sums), where=nonzero > 0), lengths)
    q[counts[:i] == 0] = 0.0
    return _kl(p, q) if q.sum() else float("inf")


def entropy_amax(counts: np.ndarray, width: float, levels: int = 128, start: int = 128, coarse: int = 16) -> float:
    """TensorRT's entropy threshold: the clip point with the least KL divergence after quantizing to ``levels``.

    The search runs over every ``coarse``-th bin, then bin by bin around the best (TensorRT scans
    every bin; the divergence is smooth in the threshold, and this is ~10x faster in NumPy).
    """
    counts = np.asarray(counts, dtype=np.float64)
    last = int(np.flatnonzero(counts)[-1]) + 1 if counts.any() else 0
    if last <= start:
        return last * width
    tail = np.concatenate([np.cumsum(counts[::-1])[::-1], [0.0]])  # tail[i] = counts[i:].sum()
    kl = {i: _divergence(counts, tail, i, levels) for i in range(start, last + 1, coarse)}
    kl[last] = _divergence(counts, tail, last, levels)
    centre = min(kl, key=lambda i: (kl[i], -i))
    for i in range(max(start, centre - coarse + 1), min(last, centre + coarse - 1) + 1):
        kl.setdefault(i, _divergence(counts, tail, i, levels))
    best = min(kl, key=lambda i: (kl[i], -i))
    return (best + 0.5) * width


def percentile_amax(counts: np.ndarray, width: float, percentile: float = PERCENTILE) -> float:
    """|x| value below which ``percentile`` % of the calibration values lie (upper bin edge)."""
    total = counts.sum()
    if not total:
        return 0.0
    k = int(np.searchsorted(np.cumsum(counts), total * percentile / 100.0))
    return (k + 1) * width


def mse_amax(counts: np.ndarray, width: float, candidates: int = 256, qmax: int = 127) -> float:
    """The clip point (among ``candidates`` spread up to the largest value) with the least expected squared error.

    Each bin's values sit at the bin centre; quantization maps them to ``round(x / s) * s`` clipped at
    ``qmax * s`` with ``s = clip / qmax``.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not counts.any():
        return 0.0
    last = int(np.flatnonzero(counts)[-1]) + 1
    centres = (np.arange(last) + 0.5) * width
    c = counts[:last]
    clips = np.linspace(last * width / candidates, last * width, candidates)
    scales = clips[:, None] / qmax
    err = ((centres[None, :] - np.minimum(np.round(centres[None, :] / scales), qmax) * scales) ** 2 * c[None, :]).sum(1)
    return float(clips[int(np.argmin(err))])


def amax_from(hist: AbsHistogram, method: str) -> float:
    """One tensor's amax by ``method``; never above the observed max."""
    if method not in METHODS:
        raise CloExportError(f"unknown calibration method {method!r}; use one of {', '.join(METHODS)}")
    if method == "minmax" or hist.width == 0.0:
        return hist.amax
    counts, width = hist.rebinned()
    if method == "mse":
        value = mse_amax(counts, width)
    else:
        value = entropy_amax(counts, width) if method == "entropy" else percentile_amax(counts, width)
    return float(min(value, hist.amax))


class RangeCollector:
    """Accumulates per-tensor statistics batch by batch; ``amaxes(method)`` gives the ranges."""

    def __init__(self, names: list[str], histograms: bool = True):
        self.names = list(names)
        self.histograms = histograms
        self.hist = {n: AbsHistogram() for n in self.names}
        self.batches = 0

    def add(self, outputs: dict[str, np.ndarray]) -> None:
        for name in self.names:
            x = outputs[name]
            if self.histograms:
                self.hist[name].add(x)
            else:
                h = self.hist[name]
                h.amax = max(h.amax, float(np.abs(x).max()) if x.size else 0.0)
        self.batches += 1

    def amaxes(self, method: str) -> dict[str, float]:
        if method != "minmax" and not self.histograms:
            raise CloExportError(f"method {method} needs histograms; collect with histograms=True")
        return {n: amax_from(self.hist[n], method) for n in self.names}
