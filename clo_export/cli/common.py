"""What every command shares: option aliases, logging, and the one-line error handling."""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from typer.core import TyperArgument, TyperCommand, TyperGroup
from typing_extensions import Annotated

from clo_export.errors import CloExportError, memory_error_text

try:  # Typer >= 0.24 ships its own copy of Click; older Typer (Python 3.8 runtimes) runs on Click itself
    from typer._click.exceptions import NoSuchOption
except ImportError:  # pragma: no cover - Typer < 0.24
    from click.exceptions import NoSuchOption  # type: ignore[no-redef]

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

_state = {"debug": False, "verbose": False}


def env_debug() -> bool:
    """CLO_EXPORT_DEBUG=1 turns tracebacks on without the flag."""
    return os.environ.get("CLO_EXPORT_DEBUG", "") not in ("", "0")


# One definition per option shared between commands; a command adds its own help only where the
# meaning differs (e.g. thresholds baked into the ONNX by --nms).
POST = "Detections"
OUT = "Output"
MODEL = "Model"

Weights = Annotated[
    Path,
    typer.Argument(help="YOLOv5 checkpoint (best.pt) or state dict (--weights best.pt works too).", show_default=False),
]
Cfg = Annotated[
    Optional[Path],
    typer.Option(
        "--cfg", help="Model YAML (needed for a bare state dict; overrides the checkpoint's).", rich_help_panel=MODEL
    ),
]
Plugins = Annotated[
    Optional[List[Path]],
    typer.Option(
        "--plugin", metavar="<path>", help="Python file registering extra blocks (repeatable).", rich_help_panel=MODEL
    ),
]
IMGSZ = ("--imgsz", "--img", "--img-size")  # YOLOv5's three spellings; `--imgsz 480 640` works too (Command)
ImgSz = Annotated[
    Optional[str],
    typer.Option(
        *IMGSZ,
        help="Input size: 640, or height,width as 480,640 or 480 640 [default: the checkpoint's training size; 640 "
        "when it records none].",
        show_default=False,
    ),
]
Conf = Annotated[float, typer.Option("--conf", help="Score threshold.", rich_help_panel=POST)]
Iou = Annotated[float, typer.Option("--iou", help="NMS IoU threshold.", rich_help_panel=POST)]
MaxDet = Annotated[int, typer.Option("--max-det", help="Detections kept per image.", rich_help_panel=POST)]
AgnosticNms = Annotated[bool, typer.Option("--agnostic-nms", help="Class-agnostic NMS.", rich_help_panel=POST)]
Device = Annotated[
    Optional[str],
    typer.Option("--device", help="cpu, cuda or cuda:N (default: the GPU when there is one).", rich_help_panel=MODEL),
]
CAL = "Calibration"
Num = Annotated[
    int, typer.Option("--num", help="Calibration images to sample (200+ recommended).", rich_help_panel=CAL)
]


def output_option(default: str) -> Any:
    """The --output/-o alias, with the command's default path in its help (``OnnxOutput = output_option("…")``)."""
    return Annotated[
        Optional[Path],
        typer.Option(
            "--output", "-o", help=f"Output path (default: {default}).", rich_help_panel=OUT, show_default=False
        ),
    ]


Debug = Annotated[bool, typer.Option("--debug", metavar="", help="Show tracebacks (also CLO_EXPORT_DEBUG=1).")]
Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose", "-v", metavar="", help="More log output (clo-export trt: TensorRT's and Polygraphy's verbose log)."
    ),
]


def show_version(ctx: typer.Context, value: bool) -> None:
    """--version: print it (as ``clo-export 0.1.0`` / ``clo-infer 0.1.0``) and stop."""
    if value:
        from clo_export import __version__

        console.print(f"{ctx.find_root().info_name or 'clo-export'} {__version__}", highlight=False)
        raise typer.Exit()


Version = Annotated[
    bool, typer.Option("--version", metavar="", callback=show_version, is_eager=True, help="Print the version.")
]


def _plain(option: Any) -> Any:
    """--help is a flag too: no ``<bool>`` after it."""
    if option is not None and option.metavar is None:
        option.metavar = ""
    return option


class Group(TyperGroup):
    """The app's group: clean --help like its commands."""

    def get_help_option(self, ctx: Any) -> Any:
        return _plain(super().get_help_option(ctx))


# (command, old spelling) -> the option it became: accepted, hidden from --help, for one release (0.2) with a note
RENAMED = {
    ("onnx", "--export-batch"): "--batch",  # --batch: the model's batch dimension (onnx, trt)
    ("infer", "--batch"): "--infer-batch",  # frames per inference, clo-infer's scheduler
    ("infer", "--check-f1"): "--min-f1",  # the F1 bar, named as in clo-export check
}


def renamed(command: str, args: List[str], valued: List[str]) -> List[str]:
    """``args`` with the old spellings of ``command``'s options replaced by their names, one note for each."""
    out: List[str] = []
    value_next = False
    for i, token in enumerate(args):
        if token == "--":
            return out + args[i:]
        name, eq, value = token.partition("=")
        new = None if value_next else RENAMED.get((command, name))
        if new is not None:
            err_console.print(
                f"note: {name} is now {new} (the old name goes in the next release)", highlight=False, markup=False
            )
            token = new + eq + value
        out.append(token)
        value_next = not value_next and not eq and token in valued
    return out


class Command(TyperCommand):
    """Clean help: plain flags show no ``<bool>`` value, arguments read ``WEIGHTS`` (not ``{weights}``) in usage."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, TyperArgument):
                param.metavar = param.metavar or (param.name or "").upper()
            elif getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""

    def get_help_option(self, ctx: Any) -> Any:
        return _plain(super().get_help_option(ctx))

    def parse_args(self, ctx: Any, args: List[str]) -> List[str]:
        """YOLOv5 habits (cli/habits.py): ``--weights X`` as the positional, ``--imgsz H W``, foreign-option hints."""
        from clo_export.cli import habits

        options = [p for p in self.params if not isinstance(p, TyperArgument)]
        declared = [n for p in options for n in [*p.opts, *p.secondary_opts]]
        valued = [n for p in options if not getattr(p, "is_flag", False) for n in p.opts]
        first = next((p for p in self.params if isinstance(p, TyperArgument)), None)
        spelling = habits.POSITIONAL_OPTIONS.get(first.name or "") if first is not None else None
        spelling = None if spelling in declared else spelling
        imgsz = next((p.opts for p in options if p.name == "imgsz"), [])
        args = renamed(self.name or "", list(args), valued)
        try:
            args, moved = habits.rewrite(args, spelling, imgsz, valued)
        except ValueError as e:
            ctx.fail(str(e))
        try:
            if moved and self.make_parser(ctx).parse_args(args=list(args[1:]))[0].get(first.name) is not None:
                ctx.fail(f"{first.metavar} given twice: as the argument and as {spelling} {args[0]}; give it once")
            return super().parse_args(ctx, args)
        except NoSuchOption as e:
            text = habits.hint(self.name or "", e.option_name, declared)
            if text is None:
                raise
            ctx.fail(f"No such option: {e.option_name}; {text}")
            raise  # not reached: ctx.fail raises

    def collect_usage_pieces(self, ctx: Any) -> List[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.get_params(ctx):
            if isinstance(param, TyperArgument):
                name = param.metavar + ("..." if param.nargs != 1 else "")
                pieces.append(name if param.required else f"[{name}]")
            else:
                pieces.extend(param.get_usage_pieces(ctx))
        return pieces


def safe_streams() -> None:
    """Printing never fails: a character the terminal's encoding lacks (LANG=C, a path in UTF-8) is written escaped."""
    for stream in (sys.stdout, sys.stderr):
        reconfigure = getattr(stream, "reconfigure", None)
        if reconfigure is not None and (getattr(stream, "errors", "") or "") == "strict":
            reconfigure(errors="backslashreplace")


def check_cwd() -> None:
    """A deleted working folder is one line at the start, not a bare ENOENT (or a native library's abort) later."""
    try:
        os.getcwd()
    except OSError:
        raise CloExportError(
            "the working folder no longer exists (deleted or unmounted); cd to an existing folder "
            "and run the command again"
        ) from None


def setup(debug: bool = False, verbose: bool = False, keep: bool = False) -> None:
    """Route library logs to stderr through rich; remember --debug and --verbose (``keep``: added to the app flags)."""
    safe_streams()
    _state["debug"] = debug or (keep and _state["debug"]) or env_debug()
    _state["verbose"] = verbose or (keep and _state["verbose"])
    verbose = _state["verbose"]
    from rich.logging import RichHandler

    root = logging.getLogger("clo_export")
    root.handlers[:] = [RichHandler(console=err_console, show_time=False, show_path=False, markup=False)]
    root.setLevel(logging.DEBUG if verbose or _state["debug"] else logging.INFO)
    root.propagate = False


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM and SIGHUP behave like Ctrl-C: the same clean-up runs (temporary files removed, videos closed)."""
    raise KeyboardInterrupt


STOP_SIGNALS = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))  # no SIGHUP on Windows


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Route SIGTERM and SIGHUP (a closed terminal or ssh session) to KeyboardInterrupt while a command runs."""
    try:  # a signal already ignored (SIGHUP under nohup) stays ignored
        previous = {s: signal.signal(s, _terminate) for s in STOP_SIGNALS if signal.getsignal(s) is not signal.SIG_IGN}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red error line; the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


def evaluated(fn: F) -> F:
    """``fn`` with its annotations evaluated: Typer reads Annotated options only from evaluated ones (Python < 3.10)."""
    from typing_extensions import get_type_hints

    fn.__annotations__ = get_type_hints(fn, include_extras=True)
    return fn


def guarded(fn: F) -> F:
    """Turn CloExportError (and OS errors, memory errors, Ctrl-C/SIGTERM) into one red line (traceback: --debug).

    A command that does not declare ``--debug``/``--verbose`` itself gets them, so the global flags
    also work after the subcommand (``clo-export trt x.onnx -v`` as ``clo-export -v trt x.onnx``).
    """
    from typing_extensions import get_type_hints

    hints = get_type_hints(
        fn, include_extras=True
    )  # Typer reads Annotated options from evaluated annotations only (< 3.10)
    signature = inspect.signature(fn)
    injected = [name for name in ("debug", "verbose") if name not in signature.parameters]
    globals_ = {"debug": Debug, "verbose": Verbose}
    params = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in signature.parameters.values()]
    params += [
        inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=globals_[n]) for n in injected
    ]

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if injected:
            setup(kwargs.pop("debug", False), kwargs.pop("verbose", False), keep=True)
        try:
            with sigterm_as_interrupt():
                check_cwd()
                return fn(*args, **kwargs)
        except CloExportError as e:
            if _state["debug"]:
                raise
            raise fail(escape(str(e))) from None
        except OSError as e:
            if _state["debug"]:
                raise
            from clo_export.fileio import os_error_text

            where = f"'{e.filename}': " if e.filename else ""
            raise fail(escape(f"{where}{os_error_text(e)}")) from None
        except ImportError as e:
            from clo_export.lazy import INSTALL_HINTS, missing_dependency

            if _state["debug"] or (e.name or "").split(".")[0] not in INSTALL_HINTS:
                raise
            raise fail(escape(str(missing_dependency(e.name or "", e)))) from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            raise fail("interrupted; no partial output was left", 130) from None
        except Exception as e:  # MemoryError, torch's/cv2's/ONNX Runtime's allocation failures: one line with the size
            text = memory_error_text(e)
            if _state["debug"] or text is None:
                raise
            raise fail(escape(text)) from None

    wrapper.__annotations__ = {**hints, **{n: globals_[n] for n in injected}}
    wrapper.__signature__ = signature.replace(parameters=params)  # type: ignore[attr-defined]
    return wrapper  # type: ignore[return-value]


def comparison_table(report, title: str) -> Table:
    """Per-output differences and detection agreement of a check, as one table."""
    table = Table(title=f"{title} ({report.precision}, {report.n_inputs} frames)", title_justify="left")
    for col in ("output", "max |diff|", "mean |diff|", "cosine", "limit"):
        table.add_column(col, justify="left" if col == "output" else "right", no_wrap=col in ("output", "limit"))
    for name, s in report.tensors.items():
        table.add_row(
            name, f"{s.max_abs:.3g}", f"{s.mean_abs:.3g}", f"{s.cosine:.7f}", report.tolerance.limit_text(name)
        )
    d = report.detections
    if d is not None:
        table.add_row(
            "detections (F1)",
            f"P {d.precision:.4f}",
            f"R {d.recall:.4f}",
            f"{d.f1:.4f}",
            f">= {report.tolerance.min_f1:g}",
        )
        table.add_row("", f"{d.n_ref} ref boxes", f"{d.n_test} test boxes", f"IoU {d.mean_iou:.4f}", "")
    return table


def is_verbose() -> bool:
    """Whether --verbose/-v was given (before or after the subcommand)."""
    return _state["verbose"]


def accuracy_table(report) -> Table:
    """INT8 against FP32 on the held-out images: mAP drops, box IoU, per-output errors, agreement at deployment
    thresholds; a report with nothing held out says so, with no numbers."""
    if report.not_measured is not None:
        table = Table(title="INT8 vs FP32: not measured", title_justify="left")
        table.add_column("measure")
        table.add_column("value")
        table.add_row("accuracy", f"not measured: {escape(report.not_measured)}")
        return table
    mode = "attention FP32" if report.info.get("keep_attention_fp", True) else "attention INT8"
    share = report.info.get("int8_conv_mac_share")
    table = Table(
        title=f"INT8 vs FP32 on {report.n_images} held-out images ({report.info.get('method')}, {mode}"
        + (f", {100 * share:.1f} % of conv MACs INT8)" if share is not None else ")"),
        title_justify="left",
    )
    for col in ("measure", "value", "", ""):
        table.add_column(col, justify="left" if col == "measure" else "right")
    i, f = report.int8, report.fp32
    table.add_row(
        "mAP@.5:.95 vs FP32 dets (conf 0.001)",
        f"INT8 {i.map50_95:.4f}",
        f"FP32 {f.map50_95:.4f}",
        f"drop {i.drop50_95:.2f} pts",
    )
    table.add_row(
        "mAP@.5 vs FP32 dets (conf 0.001)", f"INT8 {i.map50:.4f}", f"FP32 {f.map50:.4f}", f"drop {i.drop50:.2f} pts"
    )
    table.add_row("box error (1 - IoU, same anchors)", f"INT8 {i.box_error:.2f} %", "", "")
    b = report.box_iou
    table.add_row(
        "box IoU of matched pairs", f"mean {b.mean:.3f}", f"p10 {b.p10:.3f}", f"<0.9: {100 * b.below_090:.1f} %"
    )
    d = report.agreement
    table.add_row(
        f"detections @conf {report.conf}, IoU 0.5", f"P {d.precision:.4f}", f"R {d.recall:.4f}", f"F1 {d.f1:.4f}"
    )
    table.add_row("", f"{d.n_ref} FP32 boxes", f"{d.n_test} INT8 boxes", "")
    for name, s in report.tensors.items():
        table.add_row(f"output {name}", f"cos {s.cosine:.6f}", f"max {s.max_abs:.4g}", f"mean {s.mean_abs:.4g}")
    return table
