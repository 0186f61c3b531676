"""``clo-export quantize`` as library steps: sample images, calibrate (or read the cache), choose the
range method and the float sites on the held-out split, insert Q/DQ, check TensorRT's rules, write
model + sidecar + accuracy report (+ sensitivity table) atomically.

Automatic precision (the default): every range method is tried on the held-out split and mse
kept unless another cuts the box error significantly (by 2 % and by 2 standard errors over the held-out
images: ``--method auto``; ``sensitivity.choose_method``); then the sites whose float-alone run recovers most box
error per MAC, significantly, are kept float until the held-out mAP@.5:.95 drop is within ``target_drop`` points,
keeping at least 90 % of the Conv MACs in INT8. Only the held-out split of the calibration source decides (box
error: :mod:`clo_export.quantization.accuracy`). When that misses the target, each activation range of the chosen
model is scaled where that significantly cuts the box error on calibration images (:mod:`.refine`).

The accuracy gate: a model whose held-out agreement is below ``min_agreement`` is written, marked failed,
and refused (:class:`AgreementError`). A set too small to hold images out calibrates on all of them with
auto's first method and no fallback, and its report is "not measured"; an explicit ``min_agreement``
(or ``sensitivity``) is then refused before any work, since it cannot be checked.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import onnx

from clo_export.artifacts import (
    PREFIX,
    ModelMeta,
    OnnxSidecar,
    graph_input,
    load_onnx,
    opset_of,
    read_metadata,
    write_metadata,
)
from clo_export.errors import CloExportError
from clo_export.export.lint import full_check
from clo_export.fileio import atomic_path, is_stream, json_text, sha256_file, write_text_atomic
from clo_export.quantization.accuracy import DEFAULT_MIN_AGREEMENT, AccuracyReport, HeldOut, Measured, Score
from clo_export.quantization.cache import CacheKey, CacheLookup, load_ranges, preprocess_params, save_ranges
from clo_export.quantization.calibrate import Progress, calibrate
from clo_export.quantization.calibset import (
    DEFAULT_HOLDOUT,
    DEFAULT_NUM,
    MIN_HOLDOUT,
    MIN_IMAGES,
    CalibrationData,
    CalibSplit,
    split_sources,
)
from clo_export.quantization.graph import GraphIndex, Target, activation_tensors, attention_nodes, find_targets
from clo_export.quantization.macs import int8_conv_share, node_macs
from clo_export.quantization.qdq import insert_qdq
from clo_export.quantization.ranges import METHODS
from clo_export.quantization.refine import REFINE_IMAGES, Refinement, Step, refine_ranges
from clo_export.quantization.rules import require_trt_qdq
from clo_export.quantization.sensitivity import (
    MIN_INT8_SHARE,
    Choice,
    Evaluate,
    SiteResult,
    choose_float,
    choose_method,
    find_sites,
    measure,
)
from clo_export.thresholds import DEFAULT, check_unit
from clo_export.validate import at_least, check_quantize_inputs, check_quantize_outputs

log = logging.getLogger(__name__)

CALIBRATION_KEY = PREFIX + "calibration"  # metadata_props key holding the calibration facts (JSON)


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything ``clo-export quantize`` (and ``trt --int8 --calib``) can be asked for; the rules: ``validate()``."""

    method: str = "auto"  # or one of METHODS
    num: int = DEFAULT_NUM
    holdout: int = DEFAULT_HOLDOUT
    seed: int = 0
    keep_attention_fp: bool = True
    cache: Path | None = None  # default: OUT with .calib.json
    recalibrate: bool = False
    conf: float = DEFAULT.conf
    iou: float = DEFAULT.iou
    min_images: int = MIN_IMAGES
    threads: int | None = None
    target_drop: float | None = 0.3  # points of held-out mAP@.5:.95; None: no float fallback (all INT8)
    sensitivity: bool = False  # also measure each site quantized alone and write the table
    min_int8_share: float = MIN_INT8_SHARE
    refine_ranges: bool = True  # target missed after the fallback: scale ranges where that cuts the box error
    min_agreement: float | None = None  # None: DEFAULT_MIN_AGREEMENT where measured; a value must be checked
    min_holdout: int = MIN_HOLDOUT

    @property
    def agreement_floor(self) -> float:
        """The INT8/FP32 mAP@.5:.95 agreement below which the model is refused (the gate)."""
        return DEFAULT_MIN_AGREEMENT if self.min_agreement is None else self.min_agreement

    @property
    def gate_required(self) -> bool:
        """True when the gate was asked for explicitly (a floor above 0): a run that cannot measure it refuses."""
        return bool(self.min_agreement)

    def validate(self) -> None:
        """Refuse bad values and combinations before any work starts."""
        if self.method != "auto" and self.method not in METHODS:
            raise CloExportError(f"--method {self.method} is unknown; choose auto, {', '.join(METHODS)}")
        if self.target_drop is not None and not 0 <= self.target_drop < 100:
            raise CloExportError(f"--target-drop {self.target_drop} must lie in [0, 100) points of mAP@.5:.95")
        if self.num < self.min_images:
            raise CloExportError(
                f"--num {self.num} is too small; calibrate on at least {self.min_images} images (256 is the default)"
            )
        if self.holdout != 0 and self.holdout < self.min_holdout:
            raise CloExportError(
                f"--holdout {self.holdout} must be 0 (no accuracy report) or at least {self.min_holdout}; "
                "an INT8 accuracy report on fewer held-out images is noise"
            )
        at_least("--seed", self.seed, 0)
        check_unit("--conf", self.conf)
        check_unit("--iou", self.iou)
        check_unit("--min-agreement", self.min_agreement)
        if self.holdout == 0:
            self.require_measured("--holdout 0 holds no images out", "hold images out")

    def require_measured(self, why: str, fix: str = "add images to --calib") -> None:
        """Refuse what needs the held-out report (an explicit --min-agreement, --sensitivity) when there is none."""
        if self.gate_required:
            raise CloExportError(
                f"--min-agreement {self.min_agreement} cannot be checked: {why}; {fix}, or leave --min-agreement out "
                "to write the model with its accuracy marked not measured"
            )
        if self.sensitivity:
            raise CloExportError(f"--sensitivity needs held-out images: {why}; {fix}")


@dataclass
class QuantizeResult:
    """The written Q/DQ model, its sidecar and report, and what each step did."""

    path: Path
    sidecar: Path | None  # None (and no report or cache either) when the model went to a device or pipe
    accuracy_path: Path | None
    cache_path: Path | None
    report: AccuracyReport
    split: CalibSplit
    cache: CacheLookup
    n_qdq_tensors: int
    n_weights: int
    attention_fp: list[str]
    method: str  # the range method used (chosen on the held-out split when --method auto)
    method_scores: dict[str, Score]
    sites: list[SiteResult] | None
    choice: Choice | None
    float_nodes: list[str]  # every node kept float: attention path + fallback sites
    int8_share: float  # of Conv MACs
    sensitivity_path: Path | None
    seconds: dict[str, float] = field(default_factory=dict)
    refinement: Refinement | None = None  # what range refinement moved (None: not run)


def default_output(onnx_path: Path) -> Path:
    """best.onnx -> best.int8.onnx."""
    return onnx_path.with_name(onnx_path.stem + ".int8.onnx")


def check_input(model: onnx.ModelProto, meta: ModelMeta, path: Path) -> None:
    """The input must be a static FP32 model with an image size in its metadata."""
    if any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in model.graph.node):
        raise CloExportError(f"{path} already holds Q/DQ nodes; quantize the FP32 ONNX from clo-export onnx")
    if meta.precision not in (None, "fp32"):
        raise CloExportError(f"{path} is {meta.precision}; quantize the FP32 ONNX (clo-export onnx without --half)")
    if meta.imgsz is None:
        raise CloExportError(
            f"{path} has no fixed input size (a --dynamic export); quantize a fixed-size ONNX: "
            "YOLOv5 export.py without --dynamic, or clo-export onnx --imgsz H,W"
        )
    opset = opset_of(model) or 0
    if opset < 13:
        raise CloExportError(f"{path} is opset {opset}; per-channel Q/DQ needs opset 13+: re-export with --opset 17")


def assert_float(model: onnx.ModelProto, nodes: set[str]) -> None:
    """Raise if any of ``nodes`` reads a DequantizeLinear output (the attention path must stay float)."""
    idx = GraphIndex(model)
    bad = sorted(
        n.name
        for n in model.graph.node
        if n.name in nodes
        and any(idx.producer.get(i) is not None and idx.producer[i].op_type == "DequantizeLinear" for i in n.input)
    )
    if bad:
        raise CloExportError(f"attention nodes {bad[:3]} were quantized although --keep-attention-fp was asked")


def _ranges(
    model: onnx.ModelProto,
    split: CalibSplit,
    imgsz: tuple[int, int],
    input_name: str,
    tensors: list[str],
    key: CacheKey,
    cache_path: Path | None,
    opts: QuantizeOptions,
    progress: Progress | None,
) -> tuple[dict[str, dict[str, float]], CacheLookup]:
    """amax per tensor for each method tried (every method for auto), from the cache or by calibrating once."""
    methods = list(METHODS) if opts.method == "auto" else [opts.method]
    flat = [f"{m}:{t}" for m in methods for t in tensors]  # one cache file holds every method's ranges
    lookup = (
        CacheLookup("ignored", reason="--recalibrate")
        if opts.recalibrate
        else CacheLookup("missing", reason="no cache beside a device or pipe")
        if cache_path is None
        else load_ranges(cache_path, key, flat)
    )
    if lookup.ranges is None:
        data = CalibrationData(split.calib, imgsz, input_name)
        per_method = calibrate(model, data, tensors, methods, len(split.calib), progress, opts.threads)
        if data.skipped:
            log.warning("%d calibration image(s) became unreadable while calibrating", len(data.skipped))
        if cache_path is not None:
            save_ranges(
                cache_path,
                key,
                {f"{m}:{t}": v for m, r in per_method.items() for t, v in r.items()},
                len(split.calib) - len(data.skipped),
            )
        return per_method, lookup
    return {m: {t: lookup.ranges[f"{m}:{t}"] for t in tensors} for m in methods}, lookup


@dataclass
class _Job:
    """One quantize run's inputs, read and checked once."""

    onnx_path: Path
    out: Path
    cache_path: Path | None
    model: onnx.ModelProto
    meta: ModelMeta
    input_name: str
    imgsz: tuple[int, int]
    split: CalibSplit
    opts: QuantizeOptions
    sha256: str  # of the FP32 ONNX
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy_path(self) -> Path | None:
        """OUT.accuracy.json; None when OUT is a device or pipe (nothing is written beside it)."""
        return None if is_stream(self.out) else self.out.with_name(self.out.stem + ".accuracy.json")

    @contextmanager
    def timed(self, step: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.seconds[step] = time.perf_counter() - t0


@dataclass
class _Decision:
    """What the held-out split decided: range method, its ranges, float sites."""

    method: str
    ranges: dict[str, float]
    method_scores: dict[str, Score]
    all_int8: Measured | None = None  # held-out score with no site float (the chosen method's, or when sites measured)
    sites: list[SiteResult] | None = None
    choice: Choice | None = None
    refinement: Refinement | None = None

    @property
    def float_fallback(self) -> list[str]:
        return self.choice.float_nodes if self.choice is not None else []


def _open(
    onnx_path: str | Path, sources: str | Path | Sequence[str | Path], out: str | Path | None, opts: QuantizeOptions
) -> _Job:
    """Check the options, paths and input model; sample the calibration and held-out images."""
    opts.validate()
    onnx_path = Path(onnx_path)
    check_quantize_inputs(onnx_path, sources)
    out = Path(out) if out else default_output(onnx_path)
    cache_path = Path(opts.cache) if opts.cache else None if is_stream(out) else out.with_name(out.stem + ".calib.json")
    check_quantize_outputs(onnx_path, sources, out, cache_path)
    t0 = time.perf_counter()
    model = load_onnx(onnx_path)
    meta = read_metadata(model)
    check_input(model, meta, onnx_path)
    input_name = graph_input(model).name
    imgsz = tuple(meta.imgsz)
    split = split_sources(sources, opts.num, opts.holdout, opts.seed, opts.min_images, opts.min_holdout)
    if split.unmeasured:
        opts.require_measured(split.unmeasured)
    return _Job(
        onnx_path,
        out,
        cache_path,
        model,
        meta,
        input_name,
        imgsz,
        split,
        opts,
        sha256_file(onnx_path),
        {"scan": time.perf_counter() - t0},
    )


def _choose_method(
    per_method: dict[str, dict[str, float]], score: Callable[[dict[str, float]], Measured], asked: str
) -> _Decision:
    """Score each method's all-INT8 model on the held-out split and choose (``choose_method``; only one: no scoring)."""
    if len(per_method) == 1:
        return _Decision(asked, per_method[asked], {})
    scores = {m: score(per_method[m]) for m in METHODS if m in per_method}  # in order of preference
    best = choose_method(scores)
    return _Decision(best, per_method[best], {m: v.score for m, v in scores.items()}, scores[best])


def _fallback(job: _Job, targets: list[Target], decision: _Decision, evaluate: Evaluate) -> None:
    """Measure the sites and, with a target drop, keep the most sensitive ones float (fills ``decision``)."""
    opts = job.opts
    if opts.target_drop is None and not opts.sensitivity:
        return
    macs = node_macs(job.model)
    convs = {n.name for n in job.model.graph.node if n.op_type == "Conv"}
    conv_total = sum(v for k, v in macs.items() if k in convs)
    decision.all_int8 = decision.all_int8 or evaluate(frozenset())
    decision.sites = measure(
        find_sites(job.model, targets, macs), conv_total, evaluate, decision.all_int8, opts.sensitivity
    )
    if opts.target_drop is not None:
        decision.choice = choose_float(
            decision.sites, decision.all_int8, conv_total, evaluate, opts.target_drop, opts.min_int8_share
        )
        if not decision.choice.met:
            log.warning(decision.choice.reason)


def _refine(
    job: _Job, decision: _Decision, targets: list[Target], build: Callable[..., onnx.ModelProto], step: Step | None
) -> None:
    """Refine the chosen model's activation ranges on calibration images when the float fallback did not reach the
    target drop (fills ``decision``; module ``refine``): a model already within the target is not worth minutes."""
    if not job.opts.refine_ranges or decision.choice is None or decision.choice.met:
        return
    calib = job.split.calib
    items = calib[:: max(1, len(calib) // REFINE_IMAGES)][:REFINE_IMAGES]
    data = CalibrationData(items, job.imgsz, job.input_name)
    images = HeldOut(str(job.onnx_path), data, job.opts.conf, job.opts.iou, job.opts.threads)
    fallback = frozenset(decision.float_fallback)
    decision.refinement = refine_ranges(
        activation_tensors(qdq_targets(targets, fallback)),
        decision.ranges,
        lambda r: images.measure_boxes(build(r, fallback).SerializeToString()),
        images.n_images,
        step=step,
    )
    decision.ranges = decision.refinement.ranges


def _calibration_facts(job: _Job, decision: _Decision, float_nodes: list[str], share: float) -> dict[str, Any]:
    """What the Q/DQ model's metadata and sidecar say about its calibration."""
    o = job.opts
    return {
        "method": decision.method,
        "method_asked": o.method,
        "images": len(job.split.calib),
        "holdout_images": len(job.split.holdout),
        "seed": o.seed,
        "keep_attention_fp": o.keep_attention_fp,
        "skipped": len(job.split.skipped),
        "target_drop": o.target_drop,
        "float_nodes": float_nodes,
        "int8_conv_mac_share": share,
        "fp32_onnx": job.onnx_path.name,
        "fp32_onnx_sha256": job.sha256,
    }


def _finish(job: _Job, qmodel: onnx.ModelProto, calibration: dict[str, Any], attn: set[str]) -> bytes:
    """Check the Q/DQ model (float attention, TensorRT's rules, ONNX checker), stamp its metadata, serialize."""
    if job.opts.keep_attention_fp:
        assert_float(qmodel, attn)
    require_trt_qdq(qmodel)
    job.meta.precision = "int8"
    write_metadata(qmodel, job.meta)
    props = {p.key: p.value for p in qmodel.metadata_props}
    onnx.helper.set_model_props(qmodel, {**props, CALIBRATION_KEY: json.dumps(calibration)})
    full_check(qmodel)
    return qmodel.SerializeToString()


def _refinement_info(r: Refinement | None) -> dict[str, Any] | None:
    """The range refinement as the report's ``refinement`` field (None when it did not run)."""
    if r is None:
        return None
    return {
        "measured_on": f"{r.n_images} calibration images",
        "box_error_before": r.box_error_before,
        "box_error_after": r.box_error_after,
        "evaluations": r.evaluations,
        "changes": [asdict(c) for c in r.changes],
    }


def _report_info(job: _Job, decision: _Decision, float_nodes: list[str], share: float) -> dict[str, Any]:
    """The decisions, as the accuracy report's extra fields."""
    c, o = decision.choice, job.opts
    fallback = (
        None
        if c is None
        else {
            "target_drop_points": o.target_drop,
            "met": c.met,
            "reason": c.reason,
            "float_sites": c.float_sites,
            "float_nodes": c.float_nodes,
            "steps": c.steps,
        }
    )
    return {
        "float_nodes": float_nodes,
        "method": decision.method,
        "method_asked": o.method,
        "method_scores": {m: asdict(v) for m, v in decision.method_scores.items()},
        "keep_attention_fp": o.keep_attention_fp,
        "fallback": fallback,
        "refinement": _refinement_info(decision.refinement),
        "int8_conv_mac_share": share,
        "decided_on": "held-out split of the calibration source"
        if job.split.holdout
        else "nothing (no images held out): auto's first preference, no float fallback",
    }


def _sidecar(
    job: _Job,
    calibration: dict[str, Any],
    float_nodes: list[str],
    kept: list[Target],
    attn: list[str],
    report: AccuracyReport,
) -> OnnxSidecar:
    """The sidecar ``OUT.json``: model metadata, calibration, Q/DQ counts and the accuracy summary."""
    return OnnxSidecar(
        job.meta,
        job.out.name,
        job.onnx_path.name,
        calibration=calibration,
        float_nodes=float_nodes,
        qdq={
            "activation_tensors": len(activation_tensors(kept)),
            "weights": sum(t.weight for t in kept),
            "float_attention_nodes": attn,
        },
        accuracy={
            "file": job.accuracy_path and job.accuracy_path.name,
            "agreement_map50_95": report.score,
            "drop_map50_95_points": None if report.int8 is None else report.int8.drop50_95,
            "drop_map50_points": None if report.int8 is None else report.int8.drop50,
            "not_measured": report.not_measured,
            "gate": report.info["gate"],
        },
    )


def _write_outputs(
    job: _Job, payload: bytes, report: AccuracyReport, decision: _Decision, n_images: int, side: OnnxSidecar
) -> tuple[Path | None, Path | None]:
    """Write the model, the accuracy report, the sensitivity table (when asked) and the sidecar, each atomically."""
    with atomic_path(job.out) as tmp:
        tmp.write_bytes(payload)
    if job.accuracy_path is None:  # a device or pipe: the model only
        return None, side.write(job.out)
    write_text_atomic(job.accuracy_path, report.to_json())
    sensitivity_path = None
    if decision.sites is not None and job.opts.sensitivity:
        sensitivity_path = job.out.with_name(job.out.stem + ".sensitivity.json")
        table = {
            "method": decision.method,
            "held_out_images": n_images,
            "metric": "mAP@.5:.95 drop vs FP32 detections (points)",
            "all_int8": asdict(decision.all_int8.score),
            "sites": [r.to_dict() for r in decision.sites],
        }
        write_text_atomic(sensitivity_path, json_text(table, indent=2))
    return sensitivity_path, side.write(job.out)


class AgreementError(CloExportError):
    """INT8 missed the --min-agreement gate; the model and its report are written, marked failed (``result``)."""

    def __init__(self, message: str, result: QuantizeResult):
        super().__init__(message)
        self.result = result


def gate_outcome(report: AccuracyReport, opts: QuantizeOptions) -> str:
    """The --min-agreement gate on ``report``: "passed", "failed" or "not measured" (no held-out images)."""
    if report.score is None:
        return "not measured"
    return "passed" if report.score >= opts.agreement_floor else "failed"


def agreement_refusal(result: QuantizeResult, floor: float) -> str:
    """The one line a failed gate gives, from quantize(), ``clo-export quantize`` and ``trt --int8 --calib`` alike."""
    r = result.report
    written = f"{result.path.name} and its report are written, marked failed; " if result.accuracy_path else ""
    return (
        f"INT8 keeps {r.score:.4f} of FP32's mAP@.5:.95 (against FP32's detections) on the {r.n_images} held-out "
        f"images (drop {r.int8.drop50_95:.2f} points), below --min-agreement {floor:g}; {written}calibrate on a few "
        "hundred frames from the deployment scene, or pass a lower --min-agreement to accept this model"
    )


def _decide(
    job: _Job, per_method: dict[str, dict[str, float]], targets: list[Target], build: Callable[..., onnx.ModelProto]
) -> tuple[HeldOut | None, _Decision]:
    """(held-out scorer or None, decision): method and float sites chosen on the held-out split, when there is one."""
    opts = job.opts
    if not job.split.holdout:  # nothing to compare on: auto takes its first preference, and no float fallback
        method = METHODS[0] if opts.method == "auto" else opts.method
        return None, _Decision(method, per_method[method], {})
    with job.timed("method"):
        data = CalibrationData(job.split.holdout, job.imgsz, job.input_name)
        held = HeldOut(str(job.onnx_path), data, opts.conf, opts.iou, opts.threads)
        decision = _choose_method(per_method, lambda r: held.measure(build(r).SerializeToString()), opts.method)
    evaluate: Evaluate = lambda nodes: held.measure(build(decision.ranges, nodes).SerializeToString())  # noqa: E731
    with job.timed("sensitivity"):
        _fallback(job, targets, decision, evaluate)
    return held, decision


def quantize(
    onnx_path: str | Path,
    sources: str | Path | Sequence[str | Path],
    out: str | Path | None = None,
    opts: QuantizeOptions = QuantizeOptions(),
    progress: Progress | None = None,
    refine_progress: Step | None = None,
) -> QuantizeResult:
    """Quantize ``onnx_path`` with images from ``sources``; see the module docstring for the steps. ``progress``
    gets (images done, total) while calibrating, ``refine_progress`` (tensors done, total) while refining ranges.

    Raises :class:`AgreementError` (after writing) when the held-out agreement is below ``opts.agreement_floor``.
    """
    job = _open(onnx_path, sources, out, opts)
    model, split = job.model, job.split
    all_targets = find_targets(model, keep_attention_fp=False)  # calibrate everything: one cache serves both modes
    tensors = activation_tensors(all_targets)
    key = CacheKey(job.sha256, opts.method, preprocess_params(job.imgsz, job.input_name), split.digest())
    with job.timed("calibrate"):
        per_method, lookup = _ranges(
            model, split, job.imgsz, job.input_name, tensors, key, job.cache_path, opts, progress
        )

    targets = [t for t in all_targets if not (opts.keep_attention_fp and t.attention)]
    attn = attention_nodes(model) if opts.keep_attention_fp else set()

    def build(ranges: dict[str, float], float_nodes: frozenset = frozenset()) -> onnx.ModelProto:
        return insert_qdq(model, qdq_targets(targets, float_nodes), ranges)

    held, decision = _decide(job, per_method, targets, build)
    with job.timed("refine"):
        _refine(job, decision, targets, build, refine_progress)
    with job.timed("insert"):
        fallback = decision.float_fallback
        qmodel = build(decision.ranges, frozenset(fallback))
        float_nodes = sorted(attn | set(fallback))
        share = int8_conv_share(qmodel)
        calibration = _calibration_facts(job, decision, float_nodes, share)
        payload = _finish(job, qmodel, calibration, attn)
    with job.timed("report"):
        info = _report_info(job, decision, float_nodes, share)
        report = (
            held.report(payload, info)
            if held is not None
            else AccuracyReport.unmeasured(split.unmeasured or "no images held out", opts.conf, opts.iou, info)
        )
    outcome = gate_outcome(report, opts)
    report.info["gate"] = {"min_agreement": opts.agreement_floor, "outcome": outcome}
    report.info["seconds"] = {k: round(v, 1) for k, v in job.seconds.items()}

    kept = qdq_targets(targets, fallback)
    sidecar = _sidecar(job, calibration, float_nodes, kept, sorted(attn), report)
    sensitivity_path, side = _write_outputs(job, payload, report, decision, report.n_images, sidecar)
    result = QuantizeResult(
        job.out,
        side,
        job.accuracy_path,
        job.cache_path,
        report,
        split,
        lookup,
        len(activation_tensors(kept)),
        sum(t.weight for t in kept),
        sorted(attn),
        decision.method,
        decision.method_scores,
        decision.sites,
        decision.choice,
        float_nodes,
        share,
        sensitivity_path,
        job.seconds,
        decision.refinement,
    )
    if outcome == "failed":
        raise AgreementError(agreement_refusal(result, opts.agreement_floor), result)
    return result


def qdq_targets(targets: list[Target], float_nodes: Sequence[str]) -> list[Target]:
    """The targets that get Q/DQ once ``float_nodes`` stay float."""
    keep = set(float_nodes)
    return [t for t in targets if t.node not in keep]
