"""``clo-export quantize`` as library steps: sample images, calibrate (or read the cache), choose the
range method and the float sites on the held-out split, insert Q/DQ, check TensorRT's rules, write
model + sidecar + accuracy report (+ sensitivity table) atomically.

Automatic precision (the default): every range method is tried on the held-out split and the
best kept (``--method auto``); then the sites whose float-alone run recovers most are kept float
until the held-out mAP@.5:.95 drop is within ``target_drop`` points, keeping at least 90 % of the
Conv MACs in INT8. Only the held-out split of the calibration source decides.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import onnx

from clo_export.calib.accuracy import AccuracyReport, HeldOut, Score
from clo_export.calib.cache import CacheKey, CacheLookup, load_ranges, preprocess_params, save_ranges
from clo_export.calib.calibrate import Progress, calibrate
from clo_export.calib.graph import GraphIndex, Target, activation_tensors, attention_nodes, find_targets
from clo_export.calib.macs import int8_conv_share, node_macs
from clo_export.calib.qdq import insert_qdq
from clo_export.calib.ranges import METHODS
from clo_export.calib.sensitivity import MIN_INT8_SHARE, Choice, SiteResult, choose_float, find_sites, measure
from clo_export.calib.rules import require_trt_qdq
from clo_export.calib.sources import DEFAULT_HOLDOUT, DEFAULT_NUM, MIN_IMAGES, CalibrationData, CalibSplit, split_sources
from clo_export.errors import CloExportError
from clo_export.export.lint import full_check
from clo_export.artifacts import PREFIX, ModelMeta, OnnxSidecar, graph_input, load_onnx, opset_of, read_metadata, write_metadata
from clo_export.fileio import atomic_path, sha256_file, write_text_atomic
from clo_export.validate import check_quantize_outputs

log = logging.getLogger(__name__)

CALIBRATION_KEY = PREFIX + "calibration"  # metadata_props key holding the calibration facts (JSON)


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything ``clo-export quantize`` can be asked for."""

    method: str = "auto"  # or one of METHODS
    num: int = DEFAULT_NUM
    holdout: int = DEFAULT_HOLDOUT
    seed: int = 0
    keep_attention_fp: bool = True
    cache: Path | None = None  # default: OUT with .calib.json
    recalibrate: bool = False
    conf: float = 0.25
    iou: float = 0.45
    min_images: int = MIN_IMAGES
    threads: int | None = None
    target_drop: float | None = 0.3  # points of held-out mAP@.5:.95; None: no float fallback (all INT8)
    sensitivity: bool = False  # also measure each site quantized alone and write the table
    min_int8_share: float = MIN_INT8_SHARE

    def validate(self) -> None:
        """Refuse bad values before any work starts."""
        if self.method != "auto" and self.method not in METHODS:
            raise CloExportError(f"--method {self.method} is unknown; choose auto, {', '.join(METHODS)}")
        if self.target_drop is not None and not 0 <= self.target_drop < 100:
            raise CloExportError(f"--target-drop {self.target_drop} must lie in [0, 100) points of mAP@.5:.95")
        if self.num < self.min_images:
            raise CloExportError(f"--num {self.num} is too small; calibrate on at least {self.min_images} images (256 is the default)")
        if self.holdout < 1:
            raise CloExportError(f"--holdout {self.holdout} must be at least 1 (the accuracy report needs held-out images)")
        if not (0 < self.conf < 1 and 0 < self.iou <= 1):
            raise CloExportError("--conf must be in (0, 1) and --iou in (0, 1]")


@dataclass
class QuantizeResult:
    """The written Q/DQ model, its sidecar and report, and what each step did."""

    path: Path
    sidecar: Path
    accuracy_path: Path
    cache_path: Path
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
        raise CloExportError(f"{path} has no fixed input size (a --dynamic export); quantize a fixed-size ONNX: "
                             "YOLOv5 export.py without --dynamic, or clo-export onnx --imgsz H,W")
    opset = opset_of(model) or 0
    if opset < 13:
        raise CloExportError(f"{path} is opset {opset}; per-channel Q/DQ needs opset 13+: re-export with --opset 17")


def assert_float(model: onnx.ModelProto, nodes: set[str]) -> None:
    """Raise if any of ``nodes`` reads a DequantizeLinear output (the attention path must stay float)."""
    idx = GraphIndex(model)
    bad = sorted(n.name for n in model.graph.node if n.name in nodes
                 and any(idx.producer.get(i) is not None and idx.producer[i].op_type == "DequantizeLinear" for i in n.input))
    if bad:
        raise CloExportError(f"attention nodes {bad[:3]} were quantized although --keep-attention-fp was asked")


def _ranges(model: onnx.ModelProto, split: CalibSplit, imgsz: tuple[int, int], input_name: str, tensors: list[str],
            key: CacheKey, cache_path: Path, opts: QuantizeOptions, progress: Progress | None) -> tuple[dict[str, dict[str, float]], CacheLookup]:
    """amax per tensor for each method tried (every method for auto), from the cache or by calibrating once."""
    methods = list(METHODS) if opts.method == "auto" else [opts.method]
    flat = [f"{m}:{t}" for m in methods for t in tensors]  # one cache file holds every method's ranges
    lookup = CacheLookup("ignored", reason="--recalibrate") if opts.recalibrate else load_ranges(cache_path, key, flat)
    if lookup.ranges is None:
        data = CalibrationData(split.calib, imgsz, input_name)
        per_method = calibrate(model, data, tensors, methods, len(split.calib), progress, opts.threads)
        if data.skipped:
            log.warning("%d calibration image(s) became unreadable while calibrating", len(data.skipped))
        save_ranges(cache_path, key, {f"{m}:{t}": v for m, r in per_method.items() for t, v in r.items()},
                    len(split.calib) - len(data.skipped))
        return per_method, lookup
    return {m: {t: lookup.ranges[f"{m}:{t}"] for t in tensors} for m in methods}, lookup


def quantize(onnx_path: str | Path, sources: str | Path | Sequence[str | Path], out: str | Path | None = None,
             opts: QuantizeOptions = QuantizeOptions(), progress: Progress | None = None) -> QuantizeResult:
    """Quantize ``onnx_path`` with images from ``sources``; see the module docstring for the steps."""
    opts.validate()
    onnx_path = Path(onnx_path)
    if not onnx_path.is_file():
        raise CloExportError(f"model '{onnx_path}' does not exist; export one with clo-export onnx")
    out = Path(out) if out else default_output(onnx_path)
    cache_path = Path(opts.cache) if opts.cache else out.with_name(out.stem + ".calib.json")
    check_quantize_outputs(onnx_path, sources, out, cache_path)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    model = load_onnx(onnx_path)
    meta = read_metadata(model)
    check_input(model, meta, onnx_path)
    input_name = graph_input(model).name
    imgsz = tuple(meta.imgsz)
    split = split_sources(sources, opts.num, opts.holdout, opts.seed, opts.min_images)
    seconds["scan"] = time.perf_counter() - t0

    all_targets = find_targets(model, keep_attention_fp=False)  # calibrate everything: one cache serves both modes
    tensors = activation_tensors(all_targets)
    key = CacheKey(sha256_file(onnx_path), opts.method, preprocess_params(imgsz, input_name), split.digest())
    t0 = time.perf_counter()
    per_method, lookup = _ranges(model, split, imgsz, input_name, tensors, key, cache_path, opts, progress)
    seconds["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    targets = [t for t in all_targets if not (opts.keep_attention_fp and t.attention)]
    attn = attention_nodes(model)
    held = HeldOut(str(onnx_path), CalibrationData(split.holdout, imgsz, input_name), opts.conf, opts.iou, meta.nms, opts.threads)

    def build(ranges: dict[str, float], float_nodes: frozenset = frozenset()) -> onnx.ModelProto:
        return insert_qdq(model, qdq_targets(targets, float_nodes), ranges)

    method_scores = {m: held.score(build(r).SerializeToString()) for m, r in per_method.items()} if len(per_method) > 1 else {}
    method = min(method_scores, key=lambda m: method_scores[m].drop50_95) if method_scores else opts.method
    ranges = per_method[method]
    seconds["method"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    macs = node_macs(model)
    conv_total = sum(v for k, v in macs.items() if k in {n.name for n in model.graph.node if n.op_type == "Conv"})
    sites = choice = None
    float_fallback: list[str] = []
    if opts.target_drop is not None or opts.sensitivity:
        evaluate = lambda nodes: held.score(build(ranges, nodes).SerializeToString())  # noqa: E731
        base = method_scores.get(method) or evaluate(frozenset())
        sites = measure(find_sites(model, targets, macs), conv_total, evaluate, both=opts.sensitivity)
        if opts.target_drop is not None:
            choice = choose_float(sites, base, conv_total, evaluate, opts.target_drop, opts.min_int8_share)
            float_fallback = choice.float_nodes
            if not choice.met:
                log.warning(choice.reason)
    seconds["sensitivity"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    qmodel = build(ranges, frozenset(float_fallback))
    if opts.keep_attention_fp:
        assert_float(qmodel, attn)
    require_trt_qdq(qmodel)
    float_nodes = sorted((attn if opts.keep_attention_fp else set()) | set(float_fallback))
    share = int8_conv_share(qmodel)
    calibration = {"method": method, "method_asked": opts.method, "images": len(split.calib), "holdout_images": len(split.holdout),
                   "seed": opts.seed, "keep_attention_fp": opts.keep_attention_fp, "skipped": len(split.skipped),
                   "target_drop": opts.target_drop, "float_nodes": float_nodes, "int8_conv_mac_share": share,
                   "fp32_onnx": onnx_path.name, "fp32_onnx_sha256": key.model_sha256}
    meta.precision = "int8"
    write_metadata(qmodel, meta)
    onnx.helper.set_model_props(qmodel, {**{p.key: p.value for p in qmodel.metadata_props}, CALIBRATION_KEY: json.dumps(calibration)})
    full_check(qmodel)
    payload = qmodel.SerializeToString()
    seconds["insert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    info = {"float_nodes": float_nodes, "method": method, "method_asked": opts.method,
            "method_scores": {m: asdict(v) for m, v in method_scores.items()}, "keep_attention_fp": opts.keep_attention_fp,
            "fallback": None if choice is None else {"target_drop_points": opts.target_drop, "met": choice.met,
                                                     "reason": choice.reason, "float_sites": choice.float_sites,
                                                     "float_nodes": choice.float_nodes, "steps": choice.steps},
            "int8_conv_mac_share": share, "decided_on": "held-out split of the calibration source"}
    report = held.report(payload, info)
    seconds["report"] = time.perf_counter() - t0
    report.info["seconds"] = {k: round(v, 1) for k, v in seconds.items()}

    with atomic_path(out) as tmp:
        tmp.write_bytes(payload)
    accuracy_path = out.with_name(out.stem + ".accuracy.json")
    write_text_atomic(accuracy_path, report.to_json())
    sensitivity_path = None
    if sites is not None and opts.sensitivity:
        sensitivity_path = out.with_name(out.stem + ".sensitivity.json")
        table = {"method": method, "held_out_images": held.n_images, "metric": "mAP@.5:.95 drop vs FP32 detections (points)",
                 "all_int8": asdict(method_scores.get(method) or held.score(build(ranges).SerializeToString())),
                 "sites": [r.to_dict() for r in sites]}
        write_text_atomic(sensitivity_path, json.dumps(table, indent=2) + "\n")
    side = OnnxSidecar(meta, out.name, onnx_path.name, calibration=calibration,
             float_nodes=float_nodes,
             qdq={"activation_tensors": len(activation_tensors(qdq_targets(targets, float_fallback))),
                     "weights": sum(t.weight for t in qdq_targets(targets, float_fallback)),
                     "float_attention_nodes": sorted(attn) if opts.keep_attention_fp else []},
             accuracy={"file": accuracy_path.name, "agreement_map50_95": report.score,
                       "drop_map50_95_points": report.int8.drop50_95, "drop_map50_points": report.int8.drop50}).write(out)
    kept = qdq_targets(targets, float_fallback)
    return QuantizeResult(out, side, accuracy_path, cache_path, report, split, lookup,
                          len(activation_tensors(kept)), sum(t.weight for t in kept),
                          sorted(attn) if opts.keep_attention_fp else [], method, method_scores, sites, choice,
                          float_nodes, share, sensitivity_path, seconds)


def qdq_targets(targets: list[Target], float_nodes: Sequence[str]) -> list[Target]:
    """The targets that get Q/DQ once ``float_nodes`` stay float."""
    keep = set(float_nodes)
    return [t for t in targets if t.node not in keep]
