"""The examples every command's ``--help`` ends with (huggingface_hub's ``generate_epilog``): written once, here."""

from __future__ import annotations

from typing import Dict, List, Tuple

# command -> (command line, what it does), plain text (no markup: help renders it with and without rich);
# tests/test_cli_help.py checks every option in them against the command
EXAMPLES: Dict[str, List[Tuple[str, str]]] = {
    "onnx": [
        ("clo-export onnx best.pt", "static-shape ONNX at the training size, checked against PyTorch"),
        ("clo-export onnx best.pt --source frames/", "parity on your own frames too"),
        ("clo-export onnx best.pt --half --nms -o best.fp16.onnx", "FP16 with in-graph NMS"),
    ],
    "quantize": [
        ("clo-export quantize best.onnx --calib calib_images/", "explicit INT8 (Q/DQ) with an accuracy report"),
        ("clo-export quantize best.onnx --calib a.mp4 --calib b.mp4 --sensitivity", "two clips; per-site table"),
        ("clo-export quantize best.onnx --calib imgs/ --all-int8", "every site INT8, no float fallback"),
    ],
    "trt": [
        ("clo-export trt best.onnx --fp16 --dry-run --target 8.5", "build plan and pre-flight, no TensorRT needed"),
        ("clo-export trt best.onnx --fp16", "an FP16 engine for this GPU"),
        ("clo-export trt best.int8.onnx --int8", "an INT8 engine from the Q/DQ ONNX"),
    ],
    "check": [
        ("clo-export check best.onnx --weights best.pt", "the ONNX against its checkpoint"),
        (
            "clo-export check best.engine --weights best.pt --source street.mp4 --report report.html",
            "on real frames, with an HTML report",
        ),
    ],
    "info": [
        ("clo-export info best.pt", "layers, parameters, GFLOPs, classes"),
        ("clo-export info best.pt --imgsz 640 --no-layers", "the summary at 640 without the layer table"),
    ],
    "demo": [
        ("clo-export demo", "the whole chain on the bundled model"),
        ("clo-export demo --quick --out /tmp/demo", "a shortened chain"),
    ],
    "triton": [
        ("clo-export triton best.onnx -o model_repository/", "a Triton repository with pre/post-processing"),
        ("clo-export triton best.engine -o repo/ --name cams --max-batch 8", "an engine, batched, under a name"),
    ],
    "clo-infer": [
        ("clo-infer video.mp4 --model best.onnx --save out.mp4 --json dets.jsonl", "annotated video and detections"),
        ("clo-infer frames/ --model best.engine --save-dir annotated/", "a folder of images"),
        ("clo-infer rtsp://cam/1 --model best.onnx --check best.pt", "a stream, checked against PyTorch"),
        ("clo-infer rtsp://cam/1 --model best.engine --serve 0.0.0.0:8080", "headless: watch it in a browser"),
    ],
}


def epilog(command: str) -> str:
    """The help's closing "Examples" block for ``command`` (a ``clo-export`` subcommand or ``clo-infer``)."""
    return "\n\n".join(["Examples:", *(f"{line}   # {what}" for line, what in EXAMPLES[command])])
