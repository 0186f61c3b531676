"""``clo-infer``: run a .pt, .onnx or .engine model on a video, images, a webcam or a stream.

Only typer/rich are imported at module level: ``--help`` and the ONNX/engine paths never import
torch (a Jetson runtime install has none).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import List, Optional

import typer
from typing_extensions import Annotated

from clo_export.backends.streams import MAX_AUTO_BATCH
from clo_export.cli.common import (
    MODEL,
    OUT,
    POST,
    AgnosticNms,
    Command,
    Conf,
    Debug,
    Device,
    Iou,
    MaxDet,
    Verbose,
    Version,
    comparison_table,
    console,
    err_console,
    guarded,
    setup,
)
from clo_export.cli.examples import epilog
from clo_export.data.gstreamer import DEFAULT_DECODER, Decoder
from clo_export.errors import CloExportError
from clo_export.thresholds import DEFAULT

CHECK = "Check against PyTorch"
RUN = "Run"

app = typer.Typer(
    name="clo-infer",
    help="Run a YOLOv5(+CloFormer) model on videos, images, webcams and streams.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def parse_classes(values: list[str] | None, names: dict[int, str]) -> tuple[int, ...] | None:
    """--classes 0,2 / --classes person --classes 3 -> class ids (names looked up in the model's)."""
    if not values:
        return None
    by_name = {v.lower(): k for k, v in names.items()}
    out = []
    for token in (t.strip() for v in values for t in v.split(",")):
        if not token:
            continue
        if token.isascii() and token.isdecimal():  # not '²': str.isdigit accepts superscripts int() refuses
            out.append(int(token))
        elif token.lower() in by_name:
            out.append(by_name[token.lower()])
        else:
            raise CloExportError(
                f"--classes '{token}' is neither a class id nor one of the model's names "
                f"({', '.join(list(names.values())[:10])}{'…' if len(names) > 10 else ''})"
            )
    if not out:
        raise CloExportError(
            f"--classes {' '.join(values)!r} names no class (it would drop every detection); "
            "pass ids or names such as --classes 0,2 or --classes person"
        )
    bad = [c for c in out if c not in names]
    if bad:
        raise CloExportError(f"--classes {bad} out of range: the model has classes 0…{len(names) - 1}")
    return tuple(out)


def _save_sink(source, save: Path | None, save_dir: Path | None, prefix: str = ""):
    """The annotated-output sink for one source (None when none is asked for); ``prefix`` ("I_") keeps streams apart:
    DIR/I_STEM.mp4 for a video, DIR/I/ for images."""
    from clo_export.data.sinks import ImageDirSink, VideoSink

    if source.kind == "images":
        if save is not None:
            raise CloExportError(
                "--save writes a video, but the source is images; use --save-dir DIR for annotated images"
            )
        return (
            None
            if save_dir is None
            else ImageDirSink(save_dir / prefix.rstrip("_") if prefix else save_dir, source.files)
        )
    if save is None and save_dir is None:
        return None
    if save is None:
        stem = (
            Path(source.spec).stem
            if source.kind == "video"
            else f"{source.kind}{source.spec if source.spec.isdigit() else ''}"
        )
        save = save_dir / f"{prefix}{stem}.mp4"
    if source.size is None:
        raise CloExportError(f"the {source.kind} reports no frame size, so --save cannot open a video writer")
    return VideoSink(save, source.fps, source.size)


def make_sinks(
    source,
    save: Path | None,
    save_dir: Path | None,
    json_path: Path | None,
    show: bool,
    names: dict[int, str],
    serve: str | None = None,
):
    """The sinks asked for, checked against the source kind before any frame is read."""
    from clo_export.data.liveview import serve_sink
    from clo_export.data.sinks import JsonlSink, ShowSink

    if save is not None and save_dir is not None:
        raise CloExportError("pass either --save OUT.mp4 (video) or --save-dir DIR, not both")
    sinks = []
    try:
        if show:
            sinks.append(ShowSink())
        saver = _save_sink(source, save, save_dir)
        if saver is not None:
            sinks.append(saver)
        if json_path is not None:
            sinks.append(JsonlSink(json_path, names))
        if serve is not None:
            sinks.append(serve_sink(serve, source, names))
    except BaseException:
        for s in sinks:
            s.abort()
        raise
    return sinks


def make_stream_sinks(
    multi,
    save: Path | None,
    save_dir: Path | None,
    json_path: Path | None,
    show: bool,
    names: dict[int, str],
    serve: str | None = None,
):
    """Several streams: the shared sinks (JSON Lines tagged with the stream) and each stream's own sinks."""
    from clo_export.data.liveview import LiveView, parse_serve
    from clo_export.data.sinks import ShowSink
    from clo_export.pipeline.sinkset import StreamJsonlSink

    if save is not None:
        raise CloExportError(
            f"--save writes one video, but there are {len(multi.sources)} streams; "
            "use --save-dir DIR (one annotated video per stream)"
        )
    shared, per_stream = [], [[] for _ in multi.sources]
    view = None
    try:
        if json_path is not None:
            shared.append(StreamJsonlSink(json_path, names))
        if serve is not None:
            view = LiveView(*parse_serve(serve), [s.spec for s in multi.sources], names)
        for i, (src, own) in enumerate(zip(multi.sources, per_stream)):
            if show:
                own.append(ShowSink(f"clo-infer {i}: {src.spec}"))
            saver = _save_sink(src, None, save_dir, f"{i}_")
            if saver is not None:
                own.append(saver)
            if view is not None:
                own.append(view.sink(i, src))
    except BaseException:
        for s in shared + [s for own in per_stream for s in own]:
            s.abort()
        if view is not None:
            view.close()
        raise
    return shared, per_stream


def stats_table(result, backend: str):
    """Per-stage latency, end-to-end FPS and counts."""
    from rich.table import Table

    table = Table(
        title=f"{result.frames} frames in {result.seconds:.2f} s: {result.fps:.1f} FPS end-to-end "
        f"({backend}, batch {result.batch}"
        + (f", {result.streams} streams" if result.streams > 1 else "")
        + ")"
        + (" until the live source was lost" if result.lost else ""),
        title_justify="left",
    )
    for col in ("stage", "mean ms", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col == "stage" else "right")
    for s in result.stages.values():
        table.add_row(s.name, f"{s.mean_ms:.2f}", f"{s.p50_ms:.2f}", f"{s.p95_ms:.2f}")
    return table


def streams_table(result):
    """Several streams: per stream FPS, frames, drops, reconnects, read→written latency; the batch sizes used."""
    from rich.table import Table

    sizes = ", ".join(f"{n}×{k}" for k, n in result.batch_sizes.items())
    table = Table(
        title=f"{len(result.per_stream)} streams, one model; inferences × frames each: {sizes}", title_justify="left"
    )
    for col in ("stream", "source", "FPS", "frames", "drops", "reconnects", "p50 ms", "p95 ms"):
        table.add_column(col, justify="left" if col == "source" else "right")
    for s in result.per_stream:
        table.add_row(
            str(s.stream),
            s.source,
            f"{s.fps:.1f}",
            str(s.frames),
            str(s.dropped),
            str(s.reconnects),
            f"{s.p50_ms:.1f}",
            f"{s.p95_ms:.1f}",
        )
    return table


@app.command(cls=Command, no_args_is_help=True, epilog=epilog("clo-infer"))
@guarded
def infer(
    source: Annotated[
        Optional[List[str]],
        typer.Argument(
            help="Video file, image, folder, glob ('imgs/*.jpg'), webcam index (0), stream URL (rtsp://…) or a "
            ".streams file (one source a line); several: one model, batched across them.",
            show_default=False,
        ),
    ] = None,
    model: Annotated[
        Optional[str],
        typer.Option(
            "--model",
            "-m",
            help=".pt checkpoint, .onnx model, TensorRT .engine or triton://host:port/name (a Triton server); names, "
            "size and stride come from the model.",
            show_default=False,
            rich_help_panel=MODEL,
        ),
    ] = None,
    source_opt: Annotated[
        Optional[List[str]],
        typer.Option(
            "--source", metavar="SOURCE", help="YOLOv5's spelling of SOURCE (repeatable).", show_default=False
        ),
    ] = None,
    weights: Annotated[
        Optional[str],
        typer.Option("--weights", help="YOLOv5's spelling of --model.", show_default=False, rich_help_panel=MODEL),
    ] = None,
    device: Device = None,
    providers: Annotated[
        Optional[str],
        typer.Option(
            help="ONNX Runtime providers, comma-separated (default: TensorRT, CUDA, CPU as installed).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    threads: Annotated[
        Optional[int],
        typer.Option(
            help="ONNX Runtime intra-op threads per session (default: the cores split between the sessions).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    workers: Annotated[
        Optional[int],
        typer.Option(
            help="ONNX Runtime CPU sessions running frames in parallel (default: 2 when there are 2+ cores; GPUs and "
            ".pt use 1).",
            rich_help_panel=MODEL,
        ),
    ] = None,
    imgsz: Annotated[
        Optional[str],
        typer.Option(
            help="Input size for a .pt (default: its training size) or an ONNX without a fixed one (YOLOv5 "
            "--dynamic); fixed for other .onnx/.engine.",
            rich_help_panel=MODEL,
        ),
    ] = None,
    conf: Conf = DEFAULT.conf,
    iou: Iou = DEFAULT.iou,
    max_det: MaxDet = DEFAULT.max_det,
    classes: Annotated[
        Optional[List[str]],
        typer.Option(help="Keep only these classes: ids or names, comma-separated or repeated.", rich_help_panel=POST),
    ] = None,
    agnostic_nms: AgnosticNms = False,
    save: Annotated[
        Optional[Path], typer.Option(help="Annotated video (mp4) at the source's fps and size.", rich_help_panel=OUT)
    ] = None,
    save_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Folder for annotated images (image sources) or SOURCE.mp4 (videos); several streams: I_SOURCE.mp4 "
            "(I: the stream's index).",
            rich_help_panel=OUT,
        ),
    ] = None,
    json_path: Annotated[
        Optional[Path],
        typer.Option(
            "--json", help="JSON Lines, one record per frame (index, timestamp, detections).", rich_help_panel=OUT
        ),
    ] = None,
    show: Annotated[
        bool, typer.Option("--show", help="Show a window (needs a display; q quits).", rich_help_panel=OUT)
    ] = False,
    serve: Annotated[
        Optional[str],
        typer.Option(
            metavar="HOST:PORT",
            help="Serve a live view page (annotated frames, per-stream stats) at http://HOST:PORT/ until the run "
            "ends; PORT or :PORT binds 127.0.0.1, 0.0.0.0:PORT every interface.",
            rich_help_panel=OUT,
            show_default=False,
        ),
    ] = None,
    batch: Annotated[
        Optional[int],
        typer.Option(
            "--infer-batch",
            help="Frames per inference (a dynamic-batch or batch-N model). Default: 1 for one source; for several, "
            f"one frame of each (at most {MAX_AUTO_BATCH}) where the model takes any batch (ONNX Runtime, PyTorch).",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        Optional[int], typer.Option(help="Stop after N frames (of each stream).", rich_help_panel=RUN)
    ] = None,
    reconnect: Annotated[
        Optional[float],
        typer.Option(
            metavar="SECONDS",
            help="A webcam or stream that stops is retried (backoff 0.5 s doubling to 2 s) this long, then the run "
            "ends with exit 1 naming it (default 60; 0: give up at once).",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = None,
    decoder: Annotated[
        Decoder,
        typer.Option(
            help="Who decodes video files and rtsp:// cameras (H.264): opencv (its FFmpeg), gst (a GStreamer "
            "pipeline, software decoder) or nvv4l2 (GStreamer on a Jetson's hardware decoder); gst/nvv4l2 need "
            "OpenCV with GStreamer (JetPack's).",
            rich_help_panel=RUN,
        ),
    ] = DEFAULT_DECODER,
    max_pixels: Annotated[
        Optional[int],
        typer.Option(
            help="Largest image to decode, in pixels, checked from its header (default 100000000 = 100 MP; also "
            "CLO_EXPORT_MAX_PIXELS).",
            rich_help_panel=RUN,
            show_default=False,
        ),
    ] = None,
    sequential: Annotated[
        bool,
        typer.Option(
            "--sequential", help="One loop instead of the threaded pipeline (for comparison).", rich_help_panel=RUN
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar.", rich_help_panel=RUN)] = False,
    check: Annotated[
        Optional[Path],
        typer.Option(help="PyTorch checkpoint to compare every K-th frame with (CPU).", rich_help_panel=CHECK),
    ] = None,
    check_every: Annotated[int, typer.Option(help="Compare every K-th frame.", rich_help_panel=CHECK)] = 10,
    min_f1: Annotated[
        Optional[float],
        typer.Option(
            "--min-f1",
            help="Detection F1 to pass (default per precision: fp32 0.999, fp16 0.98, int8 0.9), as in clo-export "
            "check.",
            rich_help_panel=CHECK,
        ),
    ] = None,
    debug: Debug = False,
    verbose: Verbose = False,
    version: Version = False,
) -> None:
    """Run MODEL on SOURCE(s): annotated video/images, JSON Lines, live stats, optional check against PyTorch.

    --debug, -v/--verbose and --version go anywhere on the line, as on clo-export.
    """
    setup(debug, verbose)
    from clo_export.lazy import lazy_import

    lazy_import("cv2")  # JetPack's OpenCV may be hidden from a venv: one line with the fix, not a traceback
    from clo_export.backends.select import load_runners
    from clo_export.data.readers import expand_sources
    from clo_export.data.streams import open_sources
    from clo_export.imgsz import parse_imgsz
    from clo_export.pipeline import InferOptions

    specs = expand_sources(_one_of("SOURCE", source, "--source", source_opt) or [])
    model = _one_of("--model", model, "--weights", weights)
    if model is None:
        raise CloExportError("missing --model (or --weights): pass a .pt, .onnx, .engine or triton://host:port/name")
    later = {} if reconnect is None else {"reconnect": reconnect}
    opts = InferOptions(conf, iou, max_det, None, agnostic_nms, batch, check_every, min_f1=min_f1, **later)
    opts.validate()
    outputs = (save, save_dir, json_path)
    _check_run(specs, model, check, outputs, serve, sequential, limit, threads, workers, max_pixels)
    size = parse_imgsz(imgsz) if imgsz is not None else None
    listed = [p.strip() for p in providers.split(",") if p.strip()] if providers else None
    runners, info = load_runners(model, device, listed, size, threads, 1 if sequential else workers)
    opts = replace(opts, classes=parse_classes(classes, info.names))
    src = open_sources(specs, limit, opts.reconnect, max_pixels, decoder)  # one: as ever; several: a MultiSource
    reference = None
    if check is not None:
        from clo_export.artifacts import check_contract
        from clo_export.backends.pytorch import load_reference

        reference, trained = load_reference(check, size)
        check_contract(info, trained)
    all_sinks = _all_sinks(len(specs), src, outputs, show, info.names, serve)
    result = _run(src, runners, reference, info, all_sinks, opts, sequential, quiet)
    _report(result, info, check)


def _check_run(specs, model, check, outputs, serve, sequential, limit, threads, workers, max_pixels) -> None:
    """What InferOptions does not hold, before the model loads: inputs, outputs, counts, --serve's address."""
    from clo_export.validate import check_infer_options

    counts = dict(limit=limit, threads=threads, workers=workers, max_pixels=max_pixels)
    for spec in specs:
        check_infer_options(spec, model, check, *outputs, **counts)
    if serve is not None:
        from clo_export.data.liveview import check_serve

        check_serve(serve)  # a bad address or a port in use: one line before the model loads
    if sequential and workers not in (None, 1):
        raise CloExportError(f"--sequential runs one loop on one session; drop --workers {workers} or --sequential")


def _all_sinks(streams: int, src, outputs, show: bool, names: dict, serve):
    """(shared sinks, each stream's sinks), announcing the live view and a run that writes nothing."""
    save, save_dir, json_path = outputs
    if streams == 1:
        sinks, stream_sinks = make_sinks(src, save, save_dir, json_path, show, names, serve), []
    else:
        sinks, stream_sinks = make_stream_sinks(src, save, save_dir, json_path, show, names, serve)
    every = sinks + [s for own in stream_sinks for s in own]
    for url in sorted({s.url for s in every if hasattr(s, "url")}):
        err_console.print(f"live view: {url} (until the run ends)", highlight=False)
    if not every:
        err_console.print(
            "note: no --save/--save-dir/--json/--show: detections are counted but not written", highlight=False
        )
    return sinks, stream_sinks


def _one_of(name: str, value, alias: str, alias_value):
    """The value given as ``name`` or as its alias ``alias`` (YOLOv5's spelling); both given is an error."""
    if value and alias_value:
        raise CloExportError(f"{alias} is another spelling of {name}; pass one of them, not both")
    return value or alias_value


def _progress(quiet: bool):
    """The run's progress bar: frames, FPS, time, and per-stream FPS and drops (rich, on stderr)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    columns += (TextColumn("{task.fields[fps]:.1f} FPS"), TimeElapsedColumn(), TimeRemainingColumn())
    return Progress(*columns, TextColumn("{task.fields[streams]}"), console=err_console, disable=quiet, transient=True)


def _run(src, runners, reference, info, all_sinks, opts, sequential, quiet):
    """Activate the runners and run the pipeline under a progress bar (``all_sinks``: shared, per stream)."""
    import time
    from contextlib import ExitStack

    from clo_export.pipeline import Checker, Pipeline

    sinks, stream_sinks = all_sinks
    try:
        with ExitStack() as stack:
            for runner in runners:
                stack.enter_context(runner)
            checker = None
            if reference is not None:
                stack.enter_context(reference)
                checker = Checker(reference, info, opts)
            progress = _progress(quiet)
            task = progress.add_task(f"{info.backend}", total=src.expected(), fps=0.0, streams="")
            started: list[float] = []

            def on_frame(n: int, _dets: int) -> None:
                now = time.perf_counter()
                if not started:
                    started.append(now)
                fps = (n - 1) / (now - started[0]) if n > 1 and now > started[0] else 0.0
                per = pipeline.stream_progress() if n % 10 == 0 else None  # several streams: FPS and drops of each
                streams = (
                    {}
                    if per is None
                    else {
                        "streams": "  ".join(
                            f"#{i} {f:.1f} FPS" + (f" ({d} dropped)" if d else "") for i, (_, f, d) in enumerate(per)
                        )
                    }
                )
                progress.update(task, completed=n, fps=fps, **streams)

            pipeline = Pipeline(src, runners, info, sinks, opts, checker, on_frame, stream_sinks)
            with progress:
                return pipeline.run(threaded=not sequential)
    except BaseException:
        for s in sinks + [s for own in stream_sinks for s in own]:  # a failure before the pipeline owned them
            s.abort()
        raise


def _report(result, info, check: Path | None) -> None:
    """Print the stats, outputs and check outcome; raise for a failed check, exit 130 when interrupted."""
    console.print(stats_table(result, info.backend))
    if result.per_stream:
        console.print(streams_table(result))
    console.print(
        f"{result.detections} detections"
        + (f", {result.skipped} unreadable frame(s) skipped" if result.skipped else "")
        + (f", {result.dropped} frame(s) dropped to keep up with the live source" if result.dropped else "")
        + (
            f", {result.reconnects} reconnect(s) of the live source ({result.offline:.1f} s without frames)"
            if result.reconnects
            else ""
        )
        + (f", {result.non_finite} detection(s) with NaN/Infinity dropped" if result.non_finite else "")
    )
    for path in result.outputs:
        console.print(f"wrote {path}")
    if check is not None:
        rep = result.check
        if rep is None and not (result.gone or result.interrupted):
            raise CloExportError(
                "live check inconclusive: no frame was compared (none read, or every check skipped to "
                "keep up with a live source); check a file source or lower the load"
            )
        if rep is None:
            console.print("check: no frame was compared")
        else:
            console.print(
                comparison_table(rep, f"{Path(info.path).name} ({info.backend}) vs {check.name} (PyTorch), live")
            )
            if not rep:
                raise CloExportError(f"live check on {result.checked_frames} frame(s) {rep.describe()}")
            console.print("[green]check: within tolerance[/]")
    if result.lost:
        raise CloExportError(result.lost)
    if result.gone:
        err_console.print(
            f"{result.gone}: stopped after {result.frames} frames; outputs closed and complete", highlight=False
        )
        raise typer.Exit(1)
    if result.interrupted:
        err_console.print(f"interrupted after {result.frames} frames; outputs closed and complete", highlight=False)
        raise typer.Exit(130)


def main() -> None:  # pragma: no cover - console script convenience
    app()
