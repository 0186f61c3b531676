"""``clo-export``: export, quantize, build and check YOLOv5 + CloFormer detectors."""

from __future__ import annotations

import sys

import typer

from clo_export.cli import trt
from clo_export.cli.common import Command, Debug, Group, Verbose, Version, err_console, evaluated, setup
from clo_export.cli.examples import epilog

# Export (torch) needs Python >= 3.10; the runtime (`trt`, and clo-infer) runs on 3.8 (JetPack 5).
EXPORT_PYTHON = (3, 10)
EXPORT_COMMANDS = ("onnx", "quantize", "check", "info", "demo", "triton")

app = typer.Typer(
    name="clo-export",
    cls=Group,
    help="YOLOv5 + CloFormer EfficientAttention to verified ONNX, INT8 and TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
@evaluated
def main(
    debug: Debug = False,
    verbose: Verbose = False,
    version: Version = False,
) -> None:
    """YOLOv5 + CloFormer EfficientAttention to verified ONNX, INT8 and TensorRT.

    --debug and -v/--verbose go before or after the command (clo-export -v trt … = clo-export trt … -v).
    """
    setup(debug, verbose)


def needs_newer_python(name: str):
    """A stand-in for an export command on Python < 3.10: one line saying what to use instead."""

    def command() -> None:
        from rich.markup import escape

        have = ".".join(map(str, sys.version_info[:2]))
        err_console.print(
            "[bold red]error:[/] "
            + escape(
                f"clo-export {name} needs Python >= 3.10 (this is {have}, a runtime install); export on a workstation "
                "with pip install './clo-export[export]' and copy the .onnx here: clo-export trt and clo-infer run on "
                "this Python"
            ),
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(1)

    command.__doc__ = f"(needs Python >= 3.10) clo-export {name}"
    return command


app.command("trt", cls=Command, no_args_is_help=True, epilog=epilog("trt"))(trt.trt)
if sys.version_info >= EXPORT_PYTHON:
    from clo_export.cli import check, demo, info, onnx, quantize, triton

    app.command("onnx", cls=Command, no_args_is_help=True, epilog=epilog("onnx"))(onnx.onnx)
    app.command("quantize", cls=Command, no_args_is_help=True, epilog=epilog("quantize"))(quantize.quantize)
    app.command("check", cls=Command, no_args_is_help=True, epilog=epilog("check"))(check.check)
    app.command("info", cls=Command, no_args_is_help=True, epilog=epilog("info"))(info.info)
    app.command("demo", cls=Command, epilog=epilog("demo"))(demo.demo)
    app.command("triton", cls=Command, no_args_is_help=True, epilog=epilog("triton"))(triton.triton)
else:
    for _name in EXPORT_COMMANDS:
        app.command(_name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
            needs_newer_python(_name)
        )
