"""What every command shares: option aliases, logging, and the one-line error handling."""

from __future__ import annotations

import contextlib
import functools
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
from typing_extensions import Annotated

from clo_export.errors import CloExportError

console = Console()
err_console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

_state = {"debug": False}


def env_debug() -> bool:
    """CLO_EXPORT_DEBUG=1 turns tracebacks on without the flag."""
    return os.environ.get("CLO_EXPORT_DEBUG", "") not in ("", "0")

Weights = Annotated[Path, typer.Argument(help="YOLOv5 checkpoint (best.pt) or state dict.", show_default=False)]
Cfg = Annotated[Optional[Path], typer.Option("--cfg", help="Model YAML (needed for a bare state dict; overrides the checkpoint's).", rich_help_panel="Model")]
Plugins = Annotated[Optional[List[Path]], typer.Option("--plugin", help="Python file registering extra blocks (repeatable).", rich_help_panel="Model")]
ImgSz = Annotated[str, typer.Option("--imgsz", help="Input size: 640 or height,width (480,640 style).")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks (also CLO_EXPORT_DEBUG=1).")]
Verbose = Annotated[bool, typer.Option("--verbose", "-v", help="More log output.")]


def setup(debug: bool = False, verbose: bool = False) -> None:
    """Route library logs to stderr through rich; remember --debug."""
    _state["debug"] = debug or env_debug()
    from rich.logging import RichHandler

    root = logging.getLogger("clo_export")
    root.handlers[:] = [RichHandler(console=err_console, show_time=False, show_path=False, markup=False)]
    root.setLevel(logging.DEBUG if verbose or _state["debug"] else logging.INFO)
    root.propagate = False


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM behaves like Ctrl-C: the same clean-up runs (temporary files removed, videos closed)."""
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Route SIGTERM to KeyboardInterrupt while a command runs (main thread only)."""
    try:
        previous = signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one red error line; the Exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True, markup=True)
    return typer.Exit(code)


def guarded(fn: F) -> F:
    """Turn CloExportError (and OS errors, memory errors, Ctrl-C/SIGTERM) into one red line (a traceback only with --debug)."""
    if sys.version_info < (3, 10):  # Typer reads Annotated options from evaluated annotations only
        from typing_extensions import get_type_hints

        fn.__annotations__ = get_type_hints(fn, include_extras=True)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            with sigterm_as_interrupt():
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
        except MemoryError:
            if _state["debug"]:
                raise
            raise fail("out of memory; use a smaller --imgsz or --batch, or a machine with more memory") from None
        except KeyboardInterrupt:
            if _state["debug"]:
                raise
            raise fail("interrupted; no partial output was left", 130) from None

    return wrapper  # type: ignore[return-value]


def comparison_table(report, title: str) -> Table:
    """Per-output differences and detection agreement of a check, as one table."""
    table = Table(title=f"{title} ({report.precision}, {report.n_inputs} frames)", title_justify="left")
    for col in ("output", "max |diff|", "mean |diff|", "cosine", "limit"):
        table.add_column(col, justify="left" if col == "output" else "right", no_wrap=col in ("output", "limit"))
    for name, s in report.tensors.items():
        table.add_row(name, f"{s.max_abs:.3g}", f"{s.mean_abs:.3g}", f"{s.cosine:.7f}", report.tolerance.limit_text(name))
    d = report.detections
    if d is not None:
        table.add_row("detections (F1)", f"P {d.precision:.4f}", f"R {d.recall:.4f}", f"{d.f1:.4f}", f">= {report.tolerance.min_f1:g}")
        table.add_row("", f"{d.n_ref} ref boxes", f"{d.n_test} test boxes", f"IoU {d.mean_iou:.4f}", "")
    return table
