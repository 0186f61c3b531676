"""``clo-export quantize`` as library steps: sample images, calibrate (or read the cache), insert Q/DQ,
check TensorRT's rules, write model + sidecar + accuracy report atomically.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from clo_export.calib.accuracy import AccuracyReport, accuracy_report
from clo_export.calib.cache import CacheKey, CacheLookup, load_ranges, preprocess_params, save_ranges
from clo_export.calib.calibrate import Progress, calibrate
from clo_export.calib.graph import GraphIndex, activation_tensors, attention_nodes, find_targets
from clo_export.calib.qdq import insert_qdq
from clo_export.calib.ranges import METHODS
from clo_export.calib.rules import require_trt_qdq
from clo_export.calib.sources import DEFAULT_HOLDOUT, DEFAULT_NUM, MIN_IMAGES, CalibrationData, CalibSplit, split_sources
from clo_export.errors import CloExportError
from clo_export.export.lint import full_check
from clo_export.export.metadata import PREFIX, ModelMeta, load_onnx, read_metadata, sidecar_path, write_metadata
from clo_export.fileio import atomic_path, sha256_file, write_sidecar, write_text_atomic
from clo_export.validate import check_quantize_outputs

log = logging.getLogger(__name__)

CALIBRATION_KEY = PREFIX + "calibration"  # metadata_props key holding the calibration facts (JSON)


@dataclass(frozen=True)
class QuantizeOptions:
    """Everything ``clo-export quantize`` can be asked for."""

    method: str = "entropy"
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

    def validate(self) -> None:
        """Refuse bad values before any work starts."""
        if self.method not in METHODS:
            raise CloExportError(f"--method {self.method} is unknown; choose {', '.join(METHODS)}")
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
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise CloExportError(f"{path} is opset {opset}; per-channel Q/DQ needs opset 13+: re-export with --opset 17")


def assert_float(model: onnx.ModelProto, nodes: set[str]) -> None:
    """Raise if any of ``nodes`` reads a DequantizeLinear output (the attention path must stay float)."""
    idx = GraphIndex(model)
    bad = sorted(n.name for n in model.graph.node if n.name in nodes
                 and any(idx.producer.get(i) is not None and idx.producer[i].op_type == "DequantizeLinear" for i in n.input))
    if bad:
        raise CloExportError(f"attention nodes {bad[:3]} were quantized although --keep-attention-fp was asked")


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
    input_name = next(i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer})
    imgsz = tuple(meta.imgsz)
    split = split_sources(sources, opts.num, opts.holdout, opts.seed, opts.min_images)
    seconds["scan"] = time.perf_counter() - t0

    all_targets = find_targets(model, keep_attention_fp=False)  # calibrate everything: one cache serves both modes
    tensors = activation_tensors(all_targets)
    key = CacheKey(sha256_file(onnx_path), opts.method, preprocess_params(imgsz, input_name), split.digest())
    lookup = CacheLookup("ignored", reason="--recalibrate") if opts.recalibrate else load_ranges(cache_path, key, tensors)
    t0 = time.perf_counter()
    if lookup.ranges is None:
        data = CalibrationData(split.calib, imgsz, input_name)
        ranges = calibrate(model, data, tensors, opts.method, len(split.calib), progress, opts.threads)
        if data.skipped:
            log.warning("%d calibration image(s) became unreadable while calibrating", len(data.skipped))
        save_ranges(cache_path, key, ranges, len(split.calib) - len(data.skipped))
    else:
        ranges = lookup.ranges
    seconds["calibrate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    targets = [t for t in all_targets if not (opts.keep_attention_fp and t.attention)]
    qmodel = insert_qdq(model, targets, ranges)
    attn = attention_nodes(model)
    if opts.keep_attention_fp:
        assert_float(qmodel, attn)
    require_trt_qdq(qmodel)
    calibration = {"method": opts.method, "images": len(split.calib), "holdout_images": len(split.holdout),
                   "seed": opts.seed, "keep_attention_fp": opts.keep_attention_fp, "skipped": len(split.skipped),
                   "fp32_onnx": onnx_path.name, "fp32_onnx_sha256": key.model_sha256}
    meta.precision = "int8"
    write_metadata(qmodel, meta)
    onnx.helper.set_model_props(qmodel, {**{p.key: p.value for p in qmodel.metadata_props}, CALIBRATION_KEY: json.dumps(calibration)})
    full_check(qmodel)
    payload = qmodel.SerializeToString()
    seconds["insert"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    info = {"method": opts.method, "keep_attention_fp": opts.keep_attention_fp}
    report = accuracy_report(str(onnx_path), payload, CalibrationData(split.holdout, imgsz, input_name),
                             opts.conf, opts.iou, meta.nms, opts.threads, info)
    seconds["report"] = time.perf_counter() - t0

    with atomic_path(out) as tmp:
        tmp.write_bytes(payload)
    accuracy_path = out.with_name(out.stem + ".accuracy.json")
    write_text_atomic(accuracy_path, report.to_json())
    side = sidecar_path(out)
    facts = {**meta.to_dict(), "onnx": out.name, "source": onnx_path.name, "calibration": calibration,
             "qdq": {"activation_tensors": len(activation_tensors(targets)), "weights": sum(t.weight for t in targets),
                     "float_attention_nodes": sorted(attn) if opts.keep_attention_fp else []},
             "accuracy": {"file": accuracy_path.name, "agreement_f1": report.score, "map50_vs_fp32": report.map50}}
    write_sidecar(side, facts)
    return QuantizeResult(out, side, accuracy_path, cache_path, report, split, lookup,
                          len(activation_tensors(targets)), sum(t.weight for t in targets),
                          sorted(attn) if opts.keep_attention_fp else [], seconds)
