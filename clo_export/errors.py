"""The one user-facing error type: what is wrong and how to fix it, in one line; allocation failures in one line."""

from __future__ import annotations

import re
from typing import Optional


class CloExportError(Exception):
    """Raised by library code for anything the user can fix; the CLI prints it on one line."""


MEMORY_SIGNS = (
    "out of memory",
    "can't allocate",
    "insufficient memory",
    "failed to allocate",
    "bad allocation",
    "unable to allocate",
    "bad_alloc",
)
_SIZE = re.compile(r"(\d+(?:\.\d*)?\s*[KMGTP]i?B)\b|(\d{4,})\s*bytes|buffer of size\s*(\d+)", re.IGNORECASE)
_SIGNS = (
    ("Allocator", "PyTorch"),
    ("CUDA out of memory", "PyTorch"),
    ("OpenCV", "OpenCV"),
    ("ONNXRuntime", "ONNX Runtime"),
)
_LIBRARIES = (("torch", "PyTorch"), ("cv2", "OpenCV"), ("onnxruntime", "ONNX Runtime"), ("numpy", "NumPy"))


def _human(n: float) -> str:
    """Bytes as 1.5 GiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024:
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def memory_error_text(e: BaseException) -> Optional[str]:
    """One line for an allocation failure from PyTorch, OpenCV, ONNX Runtime or NumPy (None for any other error)."""
    text = str(e)
    if not isinstance(e, MemoryError) and not any(sign in text.lower() for sign in MEMORY_SIGNS):
        return None
    module = type(e).__module__ or ""
    who = next((name for prefix, name in _LIBRARIES if module.split(".")[0] == prefix), None)
    if who is None:
        who = next((name for sign, name in _SIGNS if sign in text), "the process")
    match = _SIZE.search(text)
    if match is None:
        size = "more memory than is free"
    elif match.group(1):
        size = match.group(1)
    else:
        size = _human(float(match.group(2) or match.group(3)))
    return (
        f"out of memory: {who} needed {size} and could not get it; use a smaller --imgsz, --infer-batch, "
        "--max-pixels or fewer --workers, close other programs, or use a machine with more memory"
    )
