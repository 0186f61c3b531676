"""``clo-export check`` as one library call: an exported model and its PyTorch checkpoint on the same frames.

Every option and output is checked before anything loads; the JSON report (and the HTML page when asked) is
written whatever the verdict, and the returned :class:`ModelCheck` is truthy only when the check passed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Tuple, Union

from clo_export.errors import CloExportError
from clo_export.pipeline.options import InferOptions
from clo_export.report import Report

PathLike = Union[str, Path]


@dataclass(frozen=True)
class ModelCheck:
    """What a check compared and wrote."""

    report: Report  # every compared frame, accumulated
    frames: int  # frames run
    skipped: int  # unreadable frames or images
    backend: str  # the runner that ran the model
    json_path: Path
    html_path: Optional[Path] = None

    def __bool__(self) -> bool:
        return bool(self.report)


def check_model(
    model: PathLike,
    weights: PathLike,
    source: str,
    options: InferOptions = InferOptions(check_every=1),
    *,
    limit: int = 200,
    device: Optional[str] = None,
    imgsz: Optional[Tuple[int, int]] = None,
    json_out: Optional[PathLike] = None,
    html: Optional[PathLike] = None,
    html_frames: int = 4,
) -> ModelCheck:
    """Run ``model`` (.onnx, .engine, .pt) and ``weights`` (its best.pt) on ``source``'s first ``limit`` frames.

    ``options`` holds the thresholds and the F1 bar (``min_f1``; None: the precision's); ``imgsz`` the size
    when it is not the checkpoint's training size. Writes ``json_out`` (default MODEL.check.json) and, with
    ``html``, a page showing the ``html_frames`` frames that disagree most.
    """
    from clo_export.artifacts import check_contract
    from clo_export.backends.pytorch import load_reference
    from clo_export.backends.select import load_runner
    from clo_export.data.readers import open_source
    from clo_export.imgsz import runner_imgsz
    from clo_export.pipeline.check import Checker
    from clo_export.pipeline.core import Pipeline
    from clo_export.validate import check_check_options

    options.validate()
    model, weights = Path(model), Path(weights)
    out = Path(json_out) if json_out else model.with_name(model.name + ".check.json")
    page = Path(html) if html else None
    check_check_options(model, weights, source, limit, html_frames, out, json_out is not None, page)
    reference, trained = load_reference(weights, imgsz)  # at its training size unless imgsz
    runner, info = load_runner(model, device, imgsz=runner_imgsz(model, imgsz, trained.imgsz))
    src = open_source(source, limit)
    with runner, reference:
        check_contract(info, trained)  # classes, stride and size before any frame, once the model has loaded
        checker = Checker(reference, info, options, keep_worst=html_frames if page else 0)
        result = Pipeline(src, runner, info, [], options, checker).run()
    rep = result.check
    if rep is None:
        raise CloExportError(f"no frame of '{source}' could be compared; pass images or a video")
    facts = {"model": str(model), "weights": str(weights), "source": source, "backend": info.backend}
    _write(out, json_out is not None, facts, result, checker, options)
    if page is not None:
        from clo_export.report_html import write_html_report

        shown = {"model": model.name, "backend": info.backend, "weights": weights.name, "source": source}
        shown["conf / iou"] = f"{options.conf} / {options.iou}"
        write_html_report(page, rep, checker.worst(), info.names, f"{model.name} vs {weights.name}", shown)
    return ModelCheck(rep, result.frames, result.skipped, info.backend, out, page)


def _write(out: Path, named: bool, facts: dict, result, checker, options: InferOptions) -> None:
    """The JSON report: what was compared, at which thresholds, the Report and each frame's F1."""
    from clo_export.fileio import write_sidecar

    payload = {
        **facts,
        "frames": result.frames,
        "skipped": result.skipped,
        "conf": options.conf,
        "iou": options.iou,
        "report": result.check.to_dict(),
        "frame_f1": [round(f, 5) for f in checker.frame_f1s()],
    }
    write_sidecar(out, payload, named_by_user=named)
