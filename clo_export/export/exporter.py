"""``clo-export onnx`` as library steps: trace the export-mode model, simplify, FP16, NMS, metadata, lint, write.

Every step either yields a checked graph or raises CloExportError before anything is written;
the file and its sidecar JSON appear atomically.
"""

from __future__ import annotations

import io
import logging
import os
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence, Union

import numpy as np
import onnx

from clo_export import __version__
from clo_export.artifacts import ModelMeta, OnnxSidecar, opset_of, write_metadata
from clo_export.errors import CloExportError
from clo_export.export.fp16 import to_fp16
from clo_export.export.lint import check_static, full_check
from clo_export.export.mode import export_model
from clo_export.export.nms_graph import append_nms
from clo_export.export.parity import check_parity
from clo_export.export.simplify import SIMPLIFIERS, SimplifyResult, simplify
from clo_export.fileio import atomic_path, check_artifact
from clo_export.imgsz import resolve_imgsz
from clo_export.models.checkpoint import LoadedModel
from clo_export.models.yolo import DetectionModel
from clo_export.report import Report
from clo_export.thresholds import DEFAULT, Thresholds
from clo_export.validate import at_least, existing_file, existing_sources, local_inputs

log = logging.getLogger(__name__)

TORCHSCRIPT_MAX_OPSET = 20  # the TorchScript exporter's ceiling in torch 2.x; above it the dynamo exporter runs
MIN_OPSET = 13  # per-channel Q/DQ and Split-with-input need 13


@dataclass(frozen=True)
class ExportOptions:
    """Everything ``clo-export onnx`` can be asked for."""

    imgsz: tuple[int, int] | None = None  # (H, W); None: the checkpoint's training size (see `for_model`)
    batch: int = 1
    dynamic_batch: bool = False
    opset: int = 17
    half: bool = False
    simplifier: str = "onnxsim"
    nms: bool = False
    conf: float = DEFAULT.conf  # --nms: the thresholds baked into the graph
    iou: float = DEFAULT.iou
    max_det: int = DEFAULT.max_det

    @property
    def precision(self) -> str:
        return "fp16" if self.half else "fp32"

    def for_model(self, loaded: LoadedModel) -> ExportOptions:
        """These options with the size decided: ``imgsz``, else the checkpoint's training size, else 640 (logged)."""
        return replace(self, imgsz=resolve_imgsz(loaded.path.name, loaded.imgsz_hint, self.imgsz))

    def validate(self) -> None:
        """Refuse bad combinations before any work starts."""
        if not MIN_OPSET <= self.opset <= 23:
            raise CloExportError(f"--opset {self.opset} is out of range; use {MIN_OPSET}…23 (17 for TensorRT 8.5/8.6)")
        at_least("--batch", self.batch, 1)
        if self.simplifier not in SIMPLIFIERS:
            raise CloExportError(f"--simplifier {self.simplifier} is unknown; choose {', '.join(SIMPLIFIERS)}")
        Thresholds(self.conf, self.iou, self.max_det).validate()


@dataclass
class ExportResult:
    """The written model, the PyTorch reference it must match, and what each step did."""

    path: Path
    sidecar: Path
    meta: ModelMeta
    reference: DetectionModel
    simplify: SimplifyResult
    nodes: int
    seconds: float
    parity: Report | None = None  # the verdict: --half's FP32-graph check when that failed, else the model's own
    graph_parity: Report | None = None  # --half: the FP32 graph it was converted from, at FP32's tolerance


def default_output(weights: Path, opts: ExportOptions) -> Path:
    """best.pt -> best.onnx (best.fp16.onnx with --half)."""
    return weights.with_suffix(".fp16.onnx" if opts.half else ".onnx")


def trace(model: DetectionModel, opts: ExportOptions) -> onnx.ModelProto:
    """Trace the export-mode model to ONNX at the requested opset and assert the opset written."""
    import torch

    dynamo = opts.opset > TORCHSCRIPT_MAX_OPSET
    # torch.export specialises a batch of 1, so a dynamic batch is traced from an example of 2
    batch = max(opts.batch, 2) if dynamo and opts.dynamic_batch else opts.batch
    x = torch.zeros(batch, model.yaml.get("ch", 3), *opts.imgsz)
    if dynamo:
        from clo_export.lazy import lazy_import

        lazy_import("onnxscript")
        kwargs = {"dynamic_shapes": ({0: torch.export.Dim("batch")},) if opts.dynamic_batch else None}
    else:
        kwargs = {"dynamic_axes": {"images": {0: "batch"}, "output0": {0: "batch"}} if opts.dynamic_batch else None}
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tracer chatter about constants is exactly what we want here
        try:
            torch.onnx.export(
                model,
                (x,),
                buf,
                opset_version=opts.opset,
                input_names=["images"],
                output_names=["output0"],
                do_constant_folding=True,
                dynamo=dynamo,
                **kwargs,
            )
        except CloExportError:
            raise
        except Exception as e:
            raise CloExportError(
                f"torch.onnx.export failed at opset {opts.opset}: {str(e).splitlines()[0]}; "
                "try the default --opset 17 (rerun with --debug for the trace)"
            ) from e
    proto = onnx.load_from_string(buf.getvalue())
    written = opset_of(proto)
    if written != opts.opset:
        raise CloExportError(
            f"the exporter wrote opset {written}, not the requested {opts.opset}; use --opset {written} or 17"
        )
    return proto


def model_meta(loaded: LoadedModel, opts: ExportOptions) -> ModelMeta:
    """The metadata written into the ONNX and its sidecar."""
    det = loaded.model.detect
    anchors = (det.anchors * det.stride.view(-1, 1, 1)).view(det.nl, -1).tolist()
    return ModelMeta(
        stride=loaded.model.max_stride,
        names=dict(loaded.names),
        imgsz=opts.imgsz,
        nc=loaded.nc,
        anchors=[[round(a, 4) for a in level] for level in anchors],
        source_sha256=loaded.sha256,
        opset=opts.opset,
        precision=opts.precision,
        version=__version__,
        nms=opts.nms,
        nms_conf=opts.conf if opts.nms else None,
        nms_iou=opts.iou if opts.nms else None,
        nms_max_det=opts.max_det if opts.nms else None,
        dynamic_batch=opts.dynamic_batch,
    )


def build(
    loaded: LoadedModel, opts: ExportOptions
) -> tuple[onnx.ModelProto, ModelMeta, DetectionModel, SimplifyResult, bytes | None]:
    """The checked ONNX graph, its metadata, the export-mode PyTorch reference (nothing written) and, for
    ``--half``, the FP32 graph it was converted from (serialized, before any NMS tail)."""
    opts = opts if opts.imgsz is not None else opts.for_model(loaded)
    opts.validate()
    reference = export_model(loaded.model, opts.imgsz, opts.batch, opts.dynamic_batch)
    proto = trace(reference, opts)
    proto, simplified = simplify(proto, opts.simplifier)
    if simplified.note:
        log.warning("simplify: %s", simplified.note)
    check_static(proto)  # before FP16/NMS: the network itself must carry no shape arithmetic
    fp32_graph = proto.SerializeToString() if opts.half else None
    if opts.half:
        proto = to_fp16(proto)
    if opts.nms:
        proto = append_nms(proto, opts.conf, opts.iou, opts.max_det)
    meta = model_meta(loaded, opts)
    write_metadata(proto, meta)
    check_static(proto)
    full_check(proto)
    return proto, meta, reference, simplified, fp32_graph


def export_onnx(
    loaded: LoadedModel,
    out: Path | None = None,
    opts: ExportOptions = ExportOptions(),
    parity_inputs: list[np.ndarray] | None = None,
) -> ExportResult:
    """Export, check parity on ``parity_inputs`` (None skips), write ``out`` and its sidecar JSON atomically.

    An export outside tolerance is still written (to inspect it); its Report says so.
    """
    t0 = time.perf_counter()
    out = Path(out) if out else default_output(loaded.path, opts)
    check_artifact({"WEIGHTS": loaded.path}, out)
    proto, meta, reference, simplified, fp32_graph = build(loaded, opts)
    seconds = time.perf_counter() - t0
    parity = graph = None
    if parity_inputs:
        if fp32_graph is not None:  # --half: the graph before the conversion, at FP32's tolerance (docs/onnx.md)
            graph = check_parity(fp32_graph, reference, parity_inputs, replace(meta, precision="fp32", nms=False))
        failed_graph = graph is not None and not graph  # a failed Report is falsy
        parity = graph if failed_graph else check_parity(proto.SerializeToString(), reference, parity_inputs, meta)
    with atomic_path(out) as tmp:
        onnx.save(proto, str(tmp))
    side = OnnxSidecar(
        meta,
        out.name,
        loaded.path.name,
        export_seconds=round(seconds, 2),
        parity=parity.to_dict() if parity is not None else None,
        graph_parity=graph.to_dict() if graph is not None else None,
    ).write(out)  # a failed Report is falsy
    return ExportResult(out, side, meta, reference, simplified, len(proto.graph.node), seconds, parity, graph)


def export_checkpoint(
    model: Union[LoadedModel, str, os.PathLike],
    out: Union[str, os.PathLike, None] = None,
    opts: ExportOptions = ExportOptions(),
    *,
    check: bool = True,
    source: Union[str, os.PathLike, None] = None,
    cfg: Union[str, os.PathLike, None] = None,
    plugins: Sequence[Union[str, os.PathLike]] = (),
) -> ExportResult:
    """``clo-export onnx`` as one call (``clo_export.export_onnx``): every check before any work, then load, export
    at the decided size, parity on ``source``'s frames (else the bundled ones) and write."""
    from clo_export.export.parity import parity_batches
    from clo_export.imgsz import check_memory
    from clo_export.models.checkpoint import load

    opts.validate()
    path_given = isinstance(model, (str, os.PathLike))
    weights = Path(model) if path_given else model.path
    if path_given:
        existing_file("WEIGHTS", weights, "pass the path to your best.pt")
    elif cfg is not None or plugins:
        raise CloExportError("cfg and plugins apply while loading: pass the checkpoint's path, not a loaded model")
    existing_sources("--source", [source] if source else [], "pass images, a folder, a glob or a video")
    out = Path(out) if out else default_output(weights, opts)
    sources = local_inputs(source) if source else []
    check_artifact({"WEIGHTS": weights, "--cfg": cfg, "--plugin": list(plugins), "--source": sources}, out)
    loaded = load(weights, cfg, tuple(plugins)) if path_given else model
    opts = opts.for_model(loaded)
    opts.validate()
    loaded.model.check_imgsz(opts.imgsz)
    check_memory(loaded.model, opts.imgsz, opts.batch)  # before the parity frames of that size are made
    sizes = (opts.batch, 3) if opts.dynamic_batch and opts.batch != 3 else (opts.batch,)
    return export_onnx(loaded, out, opts, parity_batches(opts.imgsz, sizes, source=source) if check else None)
