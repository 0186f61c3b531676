"""YOLOv5/Ultralytics spellings: which ones mean one of our options, and the hint for the ones that do not apply.

Used by the shared ``Command`` class (cli/common.py): the rewrite runs before Click parses, the hints
only when Click finds an option unknown to the command, so an option a command declares always wins.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

# positional argument (parameter name) -> YOLOv5's option spelling of it: `--weights best.pt` = `best.pt`
POSITIONAL_OPTIONS: Dict[str, str] = {"weights": "--weights", "source": "--source"}

# YOLOv5/Ultralytics spelling -> ours; the hint names ours only where the command has it
SAME_AS: Dict[str, str] = {
    "--conf-thres": "--conf",
    "--iou-thres": "--iou",
    "--topk-all": "--max-det",
    "--dynamic": "--dynamic-batch",
    "--batch-size": "--batch",
    "--half": "--fp16",
    "--check-f1": "--min-f1",
    "--weights": "--model",
}

# (command, spelling) -> what to do instead: options that have no counterpart in that command
NOT_NEEDED: Dict[Tuple[str, str], str] = {
    ("onnx", "--include"): "clo-export onnx always writes ONNX; drop --include (INT8: clo-export quantize, "
    "TensorRT: clo-export trt)",
    ("onnx", "--device"): "export runs on the CPU (the ONNX is the same on any device); drop --device",
    ("onnx", "--simplify"): "the ONNX is simplified by default (--simplifier onnxsim, onnxslim or none); "
    "drop --simplify",
    ("onnx", "--int8"): "INT8 is its own step after export: clo-export quantize best.onnx --calib images/",
    ("onnx", "--data"): "class names come from the checkpoint; drop --data",
    ("onnx", "--inplace"): "the exported graph never modifies its input; drop --inplace",
    ("onnx", "--train"): "export is always in inference mode; drop --train",
    ("check", "--data"): "check compares against the PyTorch checkpoint, not labels; drop --data "
    "(the frames come from --source)",
}


def hint(command: str, spelling: str, declared: Sequence[str]) -> Optional[str]:
    """The one-line hint for ``spelling`` unknown to ``command`` (whose options are ``declared``), None if none fits."""
    if (command, spelling) in NOT_NEEDED:
        return NOT_NEEDED[(command, spelling)]
    ours = SAME_AS.get(spelling)
    return f"did you mean {ours}?" if ours in declared else None


def rewrite(
    args: Sequence[str], positional: Optional[str], imgsz_names: Sequence[str], valued: Sequence[str] = ()
) -> Tuple[List[str], bool]:
    """YOLOv5-style arguments in our form: ``--weights X`` -> positional ``X`` (``positional`` names that option),
    ``--imgsz H W`` -> ``--imgsz H,W``; returns the arguments and whether the positional came from the option.

    A second number after ``--imgsz`` is taken as the width only when it is at least 32 (no smaller number
    is an image side; on clo-infer a small one is a webcam index). The value of another option (``valued``
    names those that take one) and everything after ``--`` are left as they are.
    """
    out: List[str] = []
    moved: Optional[str] = None
    i = 0
    while i < len(args):
        token = args[i]
        if token == "--":
            out.extend(args[i:])
            break
        if positional is not None and (token == positional or token.startswith(positional + "=")):
            if moved is not None:
                raise ValueError(f"{positional} given twice; give it once")
            if "=" in token:
                moved, i = token.split("=", 1)[1], i + 1
                continue
            if i + 1 >= len(args):
                raise ValueError(f"{positional} needs a value: the path after it")
            moved, i = args[i + 1], i + 2
            continue
        if token in imgsz_names and i + 2 < len(args) and _side(args[i + 1]) and _side(args[i + 2], 32):
            out.extend([token, f"{args[i + 1]},{args[i + 2]}"])
            i += 3
            continue
        step = 2 if token in valued else 1
        out.extend(args[i : i + step])
        i += step
    return ([moved] + out if moved is not None else out), moved is not None


def _side(token: str, least: int = 1) -> bool:
    """Whether ``token`` is a whole number of at least ``least``."""
    return token.isascii() and token.isdigit() and int(token) >= least
