"""``clo-export``: export, quantize, build and check YOLOv5 + CloFormer detectors."""

from __future__ import annotations

import typer

from clo_export import __version__
from clo_export.cli import check, demo, info, onnx, quantize, triton, trt
from clo_export.cli.common import Debug, Verbose, console, setup

app = typer.Typer(
    name="clo-export",
    help="YOLOv5 + CloFormer EfficientAttention to verified ONNX, INT8 and TensorRT.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def show_version(value: bool) -> None:
    if value:
        console.print(f"clo-export {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    debug: Debug = False,
    verbose: Verbose = False,
    version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True, help="Print the version."),
) -> None:
    """YOLOv5 + CloFormer EfficientAttention to verified ONNX, INT8 and TensorRT."""
    setup(debug, verbose)


app.command("onnx", no_args_is_help=True)(onnx.onnx)
app.command("quantize", no_args_is_help=True)(quantize.quantize)
app.command("trt", no_args_is_help=True)(trt.trt)
app.command("check", no_args_is_help=True)(check.check)
app.command("info", no_args_is_help=True)(info.info)
app.command("demo")(demo.demo)
app.command("triton", no_args_is_help=True)(triton.triton)
