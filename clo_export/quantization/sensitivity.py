"""Which quantized sites cost accuracy, measured on the held-out images, and which to keep in float.

A *site* is a group of Q/DQ targets (Conv, MatMul, residual Add) that stay float or go INT8
together: one YOLOv5 module (``/model.N/...``), or one part of a module built from parts (a C3's
``cv1``, ``cv2``, ``cv3`` and its bottlenecks ``m`` with their residual Adds; SPPF's ``cv1``,
``cv2``), so that the float budget can be spent on the convolutions that need it; every output
convolution (a Conv from which no other quantized node is reachable: the Detect head's ``m.0``,
``m.1``, ``m.2``) is a site of its own. Two measurements per site, each a held-out score against FP32's
detections (see :mod:`clo_export.quantization.accuracy`): the mAP@.5:.95 drop and the box error:

- *float alone*: how much keeping this site float recovers. The output convolutions are measured
  on the all-INT8 model; every other site on the model whose output convolutions are float: their
  error reaches the boxes directly and, left INT8, it hides what an upstream site recovers;
- *INT8 alone*: only this site INT8: how much quantizing it costs by itself.

:func:`choose_method` keeps the preferred range method (mse) unless another one's all-INT8 box error is
lower by a *significant* cut; :func:`choose_float` keeps sites float, the most box-error recovery per MAC first
(the float budget is a share of MACs: a knapsack, filled greedily), one at a time and each only if it
cuts the box error of the model built so far significantly, until the held-out mAP@.5:.95 drop is
within the target, never letting the INT8 share of Conv MACs fall below the floor; a site whose
float-alone recovery is not significant is no candidate. *Significant* (:func:`significant`): at least
``MIN_GAIN`` (2 %) of the box error and at least ``NOISE_Z`` (2) standard errors of the cut over the held-out
images (:func:`gain`). On the benchmark's calibration sets (128 held-out images) the output convs and the neck
C3s' ``cv3`` recover 13 to 57 standard errors each; every other site recovers under 0.05 % of box error, within
one to three standard errors (about 0.01 %) of nothing, so which of those came first, and whether one was kept,
was decided by which images were held out. The decisions use the box error, not the drop: the drop
moves by a few tenths of a point between models with the same quantization noise, so choosing by it
kept sites that only looked better on these images.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from clo_export.quantization.accuracy import Measured, Score
from clo_export.quantization.graph import GraphIndex, Target

log = logging.getLogger(__name__)

MIN_INT8_SHARE = 0.9  # of Conv MACs
MIN_GAIN = 0.02  # a float site is kept when it cuts the box error by at least 2 % of its value
NOISE_Z = 2.0  # ... and by at least this many standard errors of that cut over the held-out images
_SITE = re.compile(r"^/?(model\.\d+)/(?:(cv\d+|m)/)?")  # module, and its part where it has named parts

Evaluate = Callable[[frozenset], Measured]  # float node names -> held-out score of that model


@dataclass(frozen=True)
class Site:
    """A group of quantized nodes that the analysis keeps float or INT8 together."""

    name: str
    nodes: tuple[str, ...]
    macs: int  # Conv MACs of its nodes
    ops: str  # e.g. "3 Conv, 1 Add"
    output: bool = False  # an output convolution (no quantized node after it)


@dataclass
class SiteResult:
    site: Site
    mac_share: float
    float_alone: Score | None = None
    int8_alone: Score | None = None
    base: Score | None = None  # the model ``float_alone`` is measured against (module docstring)
    gain_se: float = 0.0  # standard error of ``gain`` over the held-out images (:func:`gain`)

    @property
    def gain(self) -> float:
        """Box error (%) that keeping this site float recovers; 0 when not measured."""
        return self.base.box_error - self.float_alone.box_error if self.base and self.float_alone else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site.name,
            "nodes": list(self.site.nodes),
            "ops": self.site.ops,
            "mac_share": self.mac_share,
            "output_conv": self.site.output,
            "measured_on": "all INT8" if self.site.output else "output convs float",
            "gain": self.gain,
            "gain_se": self.gain_se,
            "float_alone": asdict(self.float_alone) if self.float_alone else None,
            "int8_alone": asdict(self.int8_alone) if self.int8_alone else None,
        }


@dataclass
class Choice:
    """The float sites chosen, the held-out score reached, and every step tried."""

    float_sites: list[str]
    float_nodes: list[str]
    score: Score
    int8_share: float
    met: bool
    reason: str
    steps: list[dict[str, Any]] = field(default_factory=list)


def _output_convs(model: onnx.ModelProto, idx: GraphIndex, quantized: set[str]) -> set[str]:
    """Quantized Conv nodes from which no other quantized node can be reached."""
    out = set()
    for node in model.graph.node:
        if node.op_type != "Conv" or node.name not in quantized:
            continue
        seen, stack, hit = set(), list(node.output), False
        while stack and not hit:
            t = stack.pop()
            for c, _ in idx.consumers.get(t, []):
                if c.name in quantized:
                    hit = True
                    break
                if c.name not in seen:
                    seen.add(c.name)
                    stack.extend(c.output)
        if not hit:
            out.add(node.name)
    return out


def find_sites(model: onnx.ModelProto, targets: Sequence[Target], macs: dict[str, int]) -> list[Site]:
    """Sites in graph order (see the module docstring)."""
    idx = GraphIndex(model)
    ops = {n.name: n.op_type for n in model.graph.node}
    quantized = list(dict.fromkeys(t.node for t in targets))
    heads = _output_convs(model, idx, set(quantized))
    groups: dict[str, list[str]] = {}
    for name in quantized:
        m = _SITE.match(name)
        key = name if name in heads or m is None else "/".join(g for g in m.groups() if g)
        groups.setdefault(key, []).append(name)
    sites = []
    for key, nodes in groups.items():
        kinds: dict[str, int] = {}
        for n in nodes:
            kinds[ops[n]] = kinds.get(ops[n], 0) + 1
        desc = ", ".join(f"{v} {k}" for k, v in kinds.items())
        sites.append(
            Site(key, tuple(nodes), sum(macs.get(n, 0) for n in nodes if ops[n] == "Conv"), desc, key in heads)
        )
    return sites


def gain(base: Measured, test: Measured) -> tuple[float, float]:
    """Box error (%) that ``test`` recovers from ``base`` on the same held-out images, and its standard error: how
    much the cut would move if other images of the same source had been held out (the bootstrap over images,
    linearised: the cut is a ratio of per-image sums, and both models are scored on the same images and boxes)."""
    d = base.errors - test.errors
    n = float(base.boxes.sum())
    if n <= 0:
        return 0.0, 0.0
    g = float(d.sum()) / n
    resid = d - g * base.boxes
    se = float(np.sqrt(len(d)) * resid.std(ddof=1)) / n if len(d) > 1 else 0.0
    return 100 * g, 100 * se


def significant(cut: float, se: float, of: float, min_gain: float = MIN_GAIN, z: float = NOISE_Z) -> bool:
    """A box-error cut that counts: at least ``min_gain`` of the box error ``of`` and ``z`` standard errors."""
    return cut > 0 and cut >= min_gain * of and cut >= z * se


def measure(
    sites: Sequence[Site], total_macs: int, evaluate: Evaluate, all_int8: Measured, both: bool = False
) -> list[SiteResult]:
    """Float-alone score of every site (output convs on the all-INT8 model, the rest with them float), and INT8-alone
    with ``both``; in the order of ``sites``."""
    everything = frozenset(n for s in sites for n in s.nodes)
    under = frozenset(n for s in sites if s.output for n in s.nodes)
    with_outputs_float = evaluate(under) if under and any(not s.output for s in sites) else all_int8
    out = []
    for s in sites:
        base, floated = (all_int8, frozenset()) if s.output else (with_outputs_float, under)
        alone = evaluate(floated | frozenset(s.nodes))
        share = s.macs / total_macs if total_macs else 0.0
        r = SiteResult(s, share, alone.score, base=base.score, gain_se=gain(base, alone)[1])
        if both:
            r.int8_alone = evaluate(everything - frozenset(s.nodes)).score
        log.debug(
            "site %s: float alone box error %.3f (from %.3f)", s.name, alone.score.box_error, base.score.box_error
        )
        out.append(r)
    return out


def rank(results: Sequence[SiteResult], min_gain: float = MIN_GAIN, z: float = NOISE_Z) -> list[SiteResult]:
    """Candidates for float whose float-alone recovery is significant (:func:`significant`, against their own
    base), the output convs first, then the most recovery per share of Conv MACs first."""
    found = [r for r in results if r.base and significant(r.gain, r.gain_se, r.base.box_error, min_gain, z)]
    return sorted(found, key=lambda r: (not r.site.output, -r.gain / max(r.mac_share, 1e-3)))


def choose_method(scores: dict[str, Measured], min_gain: float = MIN_GAIN, z: float = NOISE_Z) -> str:
    """The range method from each one's all-INT8 held-out score, in preference order (``METHODS``: mse first): a
    method replaces the one kept so far only when its box-error cut is significant (:func:`significant`: the margin
    a float site must earn), so that a near-tie (two methods whose box errors differ by noise) never flips the
    choice."""
    names = list(scores)
    kept = names[0]
    for m in names[1:]:
        cut, se = gain(scores[kept], scores[m])
        if significant(cut, se, scores[kept].score.box_error, min_gain, z):
            kept = m
    return kept


def choose_float(
    results: Sequence[SiteResult],
    base: Measured,
    total_macs: int,
    evaluate: Evaluate,
    target: float,
    min_share: float = MIN_INT8_SHARE,
    max_steps: int = 12,
    min_gain: float = MIN_GAIN,
    z: float = NOISE_Z,
) -> Choice:
    """Keep sites float, most recovery per MAC first, until the drop is <= ``target`` points (see module docstring)."""
    chosen: list[SiteResult] = []
    best, share = base, sum(r.mac_share for r in results)  # Convs outside every site (float attention) count as float
    steps: list[dict[str, Any]] = []
    if best.score.drop50_95 <= target:
        return Choice([], [], best.score, share, True, f"all INT8 already within {target} points", steps)
    for r in rank(results, min_gain, z):
        if sum("kept" in s for s in steps) >= max_steps:
            break
        new_share = share - r.mac_share
        if new_share < min_share:
            steps.append({"site": r.site.name, "skipped": f"INT8 share would fall to {new_share:.3f}"})
            continue
        trial = chosen + [r]
        m = evaluate(frozenset(n for c in trial for n in c.site.nodes))
        cut, se = gain(best, m)
        keep = significant(cut, se, best.score.box_error, min_gain, z)
        steps.append(
            {
                "site": r.site.name,
                "box_error": m.score.box_error,
                "cut": cut,
                "cut_se": se,
                "drop50_95": m.score.drop50_95,
                "drop50": m.score.drop50,
                "int8_share": new_share,
                "kept": keep,
            }
        )
        if keep:
            chosen, best, share = trial, m, new_share
            if best.score.drop50_95 <= target:
                break
    score = best.score
    met = score.drop50_95 <= target
    if met:
        reason = f"held-out mAP@.5:.95 drop {score.drop50_95:.2f} <= target {target} points"
    else:
        reason = (
            f"held-out mAP@.5:.95 drop {score.drop50_95:.2f} points is above the target {target}: the sites that "
            f"fit in {100 * (1 - min_share):.0f} % of the Conv MACs in float (up to {max_steps} tried) do not reach it"
        )
    nodes = sorted(n for c in chosen for n in c.site.nodes)
    return Choice([c.site.name for c in chosen], nodes, score, share, met, reason, steps)
