"""``clo-export triton``: a Triton Inference Server model repository for an .onnx or .engine."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from clo_export.cli.common import OUT, AgnosticNms, Conf, Iou, MaxDet, console, guarded
from clo_export.thresholds import DEFAULT

SERVE = "Serving"


class Platform(str, Enum):
    onnxruntime_onnx = "onnxruntime_onnx"
    tensorrt_plan = "tensorrt_plan"
    python = "python"


class Kind(str, Enum):
    gpu = "gpu"
    cpu = "cpu"


DEFAULT_MAX_BATCH = 8  # for a dynamic-batch model when --max-batch is not given


def parse_batches(values: list[str] | None) -> tuple[int, ...]:
    """--preferred-batch 4,8 / --preferred-batch 4 --preferred-batch 8 -> (4, 8)."""
    from clo_export.errors import CloExportError

    out = []
    for token in (t.strip() for v in values or () for t in v.split(",")):
        if not token:
            continue
        if not token.isdigit():
            raise CloExportError(f"--preferred-batch '{token}' is not a batch size; pass e.g. 4,8")
        out.append(int(token))
    return tuple(sorted(set(out)))


@guarded
def triton(
    model: Annotated[
        Path,
        typer.Argument(
            help=".onnx (FP32, FP16 or INT8 Q/DQ) or TensorRT .engine (with its .engine.json).", show_default=False
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Model repository folder (created; other models in it are kept).",
            rich_help_panel=OUT,
        ),
    ] = Path("model_repository"),
    name: Annotated[
        Optional[str],
        typer.Option(
            help="Ensemble name; the models are NAME_preprocess, NAME_model, NAME_postprocess (default: from MODEL).",
            rich_help_panel=OUT,
            show_default=False,
        ),
    ] = None,
    platform: Annotated[
        Optional[Platform],
        typer.Option(
            help="Detector platform (default: onnxruntime_onnx for .onnx, tensorrt_plan for .engine); python = ONNX "
            "Runtime inside the Python backend, for CPU servers.",
            rich_help_panel=SERVE,
            show_default=False,
        ),
    ] = None,
    max_batch: Annotated[
        Optional[int],
        typer.Option(
            help=f"max_batch_size (default: {DEFAULT_MAX_BATCH} for a dynamic-batch model, capped by an engine's "
            f"profile; 1 otherwise).",
            rich_help_panel=SERVE,
            show_default=False,
        ),
    ] = None,
    preferred_batch: Annotated[
        Optional[List[str]],
        typer.Option(
            help="Dynamic batcher's preferred batch sizes, comma-separated or repeated.",
            rich_help_panel=SERVE,
            show_default=False,
        ),
    ] = None,
    queue_delay_us: Annotated[
        int, typer.Option(help="Dynamic batcher's max queue delay in microseconds.", rich_help_panel=SERVE)
    ] = 100,
    instances: Annotated[
        int, typer.Option(help="Model instances (instance_group count) of each model.", rich_help_panel=SERVE)
    ] = 1,
    kind: Annotated[
        Optional[Kind],
        typer.Option(
            help="Where the detector runs (default: gpu; cpu for --platform python).",
            rich_help_panel=SERVE,
            show_default=False,
        ),
    ] = None,
    cuda_graphs: Annotated[
        bool,
        typer.Option(
            "--cuda-graphs/--no-cuda-graphs",
            help="TensorRT on the GPU: capture CUDA graphs for the preferred and max batch sizes.",
            rich_help_panel=SERVE,
        ),
    ] = True,
    threads: Annotated[
        int,
        typer.Option(
            help="--platform python: ONNX Runtime threads per instance (0: its default).", rich_help_panel=SERVE
        ),
    ] = 0,
    version: Annotated[
        int,
        typer.Option(
            "--model-version", help="Version folder to write (Triton serves the newest).", rich_help_panel=OUT
        ),
    ] = 1,
    conf: Conf = DEFAULT.conf,
    iou: Iou = DEFAULT.iou,
    max_det: MaxDet = DEFAULT.max_det,
    agnostic_nms: AgnosticNms = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace models of the same names already in the repository (only the files clo-export wrote; others "
            "are kept).",
            rich_help_panel=OUT,
        ),
    ] = False,
) -> None:
    """Write a Triton model repository: the detector, pre/postprocessing on the Python backend and an ensemble."""
    from clo_export.triton.config import Serving
    from clo_export.triton.repository import RepositoryOptions, model_facts, write_repository

    if max_batch is None:
        lo, hi = model_facts(model).batch_range
        max_batch = min(hi, DEFAULT_MAX_BATCH) if hi > 1 else 1
    serving = Serving(
        max_batch, parse_batches(preferred_batch), queue_delay_us, instances, kind.value if kind else None, cuda_graphs
    )
    opts = RepositoryOptions(
        name,
        platform.value if platform else None,
        serving,
        version,
        conf,
        iou,
        max_det,
        agnostic_nms,
        threads,
        overwrite,
    )
    repo = write_repository(model, output, opts)
    console.print(
        f"wrote Triton model repository {repo.root}/ for {model.name} ({repo.platform}, max batch {max_batch}):"
    )
    for m, path in repo.models.items():
        files = sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() and "clo_export" not in p.parts)
        console.print(f"  {m}/  {', '.join(files)}", highlight=False)
    if repo.kept:
        console.print(f"kept (not written by clo-export): {', '.join(repo.kept)}", highlight=False, markup=False)
    console.print(
        f"start a server and query it: see {repo.readme}; clo-infer VIDEO --model triton://localhost:8001/{repo.name}",
        highlight=False,
    )
