"""Option checks every command runs before any work: one-line errors, and 0 never silently means "default"."""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Optional, Union

from clo_export.errors import CloExportError

THREADS_PER_CORE = 4  # --threads/--workers beyond 4x the cores only add memory and start-up time


def at_least(option: str, value: Optional[int], minimum: int, why: str = "") -> None:
    """Refuse ``value`` below ``minimum`` (None means the option was not given and is fine)."""
    if value is not None and value < minimum:
        raise CloExportError(f"{option} {value} must be at least {minimum}{'; ' + why if why else ''}")


def at_most(option: str, value: Optional[int], maximum: int, why: str = "") -> None:
    """Refuse ``value`` above ``maximum`` (None is fine)."""
    if value is not None and value > maximum:
        raise CloExportError(f"{option} {value} must be at most {maximum}{'; ' + why if why else ''}")


def bounded_threads(option: str, value: Optional[int]) -> None:
    """Threads or sessions: at least 1 and at most :data:`THREADS_PER_CORE` x the usable cores."""
    from clo_export.backends.streams import usable_cores

    cores = usable_cores()
    at_least(option, value, 1)
    at_most(option, value, THREADS_PER_CORE * cores, f"this machine has {cores} usable core(s); more only costs memory")


def existing_file(option: str, path: Optional[Union[str, Path]], hint: str) -> None:
    """Refuse a path that is not an existing regular file (None is fine)."""
    from clo_export.data.files import path_kind, refuse_special

    if path is None:
        return
    p = Path(path)
    kind = path_kind(p)
    if kind == "missing":
        raise CloExportError(f"{option} '{p}' does not exist; {hint}")
    if kind == "folder":
        raise CloExportError(f"{option} '{p}' is a folder, not a file; {hint}")
    refuse_special(option, p, hint)


def is_remote(text: str) -> bool:
    """A webcam index, a URL or a GStreamer pipeline: no path on this machine's disk (an existing path '2024' is a
    path)."""
    from clo_export.data.files import path_kind
    from clo_export.data.gstreamer import is_pipeline

    return "://" in text or is_pipeline(text) or (text.isascii() and text.isdecimal() and path_kind(text) == "missing")


def existing_sources(option: str, specs: Iterable[Union[str, Path]], hint: str) -> None:
    """Refuse a local source (file, folder, glob) that names nothing or is a FIFO/socket/device; URLs, webcams pass."""
    import glob

    from clo_export.data.files import is_pattern, path_kind, refuse_special

    for spec in specs:
        text = str(spec)
        if is_remote(text):
            continue
        if is_pattern(text):
            if not glob.glob(text, recursive=True):
                raise CloExportError(f"{option} '{text}' matches no file; {hint}")
        elif path_kind(text) == "missing":
            raise CloExportError(f"{option} '{text}' does not exist; {hint}")
        refuse_special(option, text)


def local_inputs(spec: Union[str, Path]) -> list:
    """The files and folders a source spec names on this machine, for the output clash check."""
    import glob

    from clo_export.data.files import is_pattern

    text = str(spec)
    if is_remote(text):
        return []
    if is_pattern(text):
        return [Path(p) for p in glob.glob(text, recursive=True)]
    return [Path(text)]


def check_quantize_inputs(model: Path, calib: Union[str, Path, Iterable[Union[str, Path]]]) -> None:
    """``quantize``'s model and calibration sources exist, before anything is read (its numbers: QuantizeOptions)."""
    existing_file("MODEL", model, "export one with clo-export onnx")
    existing_sources(
        "--calib",
        [calib] if isinstance(calib, (str, Path)) else calib,
        "pass a folder, a glob, a video or a .txt list of images",
    )


def check_quantize_outputs(model: Path, sources, out: Path, cache: Path) -> None:
    """``quantize``'s outputs (model, sidecar, report, ranges cache) against its inputs, before any work."""
    from clo_export.fileio import check_artifact, check_sidecar

    specs = [sources] if isinstance(sources, (str, Path)) else list(sources)
    inputs = {"MODEL": model, "--calib": [p for s in specs for p in local_inputs(s)]}
    check_artifact(
        inputs,
        out,
        {
            "--cache": cache,
            "report": out.with_name(out.stem + ".accuracy.json"),
            "--sensitivity": out.with_name(out.stem + ".sensitivity.json"),
        },
    )
    if cache is not None:  # none beside a device or pipe
        check_sidecar(cache)


def check_check_options(
    model: Path,
    weights: Path,
    source: str,
    limit: int,
    frames: int,
    json_out: Path,
    json_named: bool,
    report: Optional[Path],
) -> None:
    """``clo-export check``: counts, inputs, and the JSON/HTML outputs against the inputs (thresholds: InferOptions)."""
    from clo_export.fileio import check_outputs, check_sidecar

    at_least("--limit", limit, 1)
    at_least("--frames", frames, 0)
    existing_file("MODEL", model, "pass the .onnx or .engine to check")
    existing_file("--weights", weights, "pass the best.pt the model was exported from")
    existing_sources("--source", [source], "pass images, a folder, a glob or a video")
    check_outputs(
        {"MODEL": model, "--weights": weights, "--source": local_inputs(source)},
        {"--json": json_out, "--report": report},
    )
    if not json_named:
        check_sidecar(json_out)


def check_infer_options(
    source: str,
    model: Union[str, Path],
    check: Optional[Path],
    save: Optional[Path],
    save_dir: Optional[Path],
    json_path: Optional[Path],
    **values: Optional[float],
) -> None:
    """``clo-infer``: the counts InferOptions does not hold, the model and source, each output against each input."""
    from clo_export.fileio import check_outputs

    for name in ("limit", "max_pixels"):
        at_least("--" + name.replace("_", "-"), values.get(name), 1)  # type: ignore[arg-type]
    for name in ("threads", "workers"):
        bounded_threads("--" + name, values.get(name))  # type: ignore[arg-type]
    local_model = None if str(model).startswith("triton://") else Path(model)  # a Triton server's model is no file
    existing_file("--model", local_model, "pass a .pt, .onnx, .engine or triton://host:port/name")
    existing_file("--check", check, "pass the best.pt the model was exported from")
    existing_sources("SOURCE", [source], "pass a video, an image, a folder, a glob, a webcam index or a stream URL")
    check_outputs(
        {"--model": local_model, "SOURCE": local_inputs(source), "--check": check},
        {"--save": save, "--json": json_path},
    )
    check_outputs(
        {"SOURCE": local_inputs(source)},
        {"--save": save, "--json": json_path},  # annotated files take the
        {"--save-dir": save_dir},
    )  # source's names, and no other output may be one of them


def check_demo_options(out: Path, frames: Optional[int], calib: Optional[int], check_every: int) -> None:
    """``clo-export demo``: 0 or negative counts are errors, never the defaults."""
    from clo_export.quantization.calibset import MIN_IMAGES

    at_least("--frames", frames, 1)
    at_least("--calib", calib, MIN_IMAGES, "calibration ranges from fewer images are noise")
    at_least("--check-every", check_every, 1)
    if out.exists() and not out.is_dir():
        raise CloExportError(f"--out '{out}' is a file; give a folder for the demo's outputs")
