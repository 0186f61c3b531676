"""Import heavy optional dependencies only when a code path needs them."""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Callable

from clo_export.errors import CloExportError

INSTALL_HINTS = {
    "torch": "pip install torch  (CPU is enough for export; on Jetson use NVIDIA's JetPack wheel)",
    "onnxruntime": "pip install onnxruntime  (or onnxruntime-gpu for CUDA; on Jetson NVIDIA's onnxruntime-gpu wheel)",
    "onnxsim": "pip install onnxsim  (or use --simplifier onnxslim)",
    "onnxslim": "pip install onnxslim",
    "tensorrt": "pip install tensorrt  (on Jetson it comes with JetPack: a venv with --system-site-packages)",
    "cv2": "pip install opencv-python-headless  (on Jetson JetPack's OpenCV: a venv with --system-site-packages)",
    "onnx": "pip install onnx",
}


def missing_dependency(name: str, e: ImportError) -> CloExportError:
    """The one-line error for an optional dependency that cannot be imported, with the command that installs it."""
    top = name.split(".")[0]
    hint = INSTALL_HINTS.get(top, f"pip install {top}")
    return CloExportError(f"{name} is needed for this step but cannot be imported ({e}); install it: {hint}")


def lazy_import(name: str) -> ModuleType:
    """Import `name` or raise CloExportError with the command that installs it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise missing_dependency(name, e) from e


def lazy_attributes(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` (PEP 562): attribute ``name`` is imported from module ``where[name]`` on first use."""

    def __getattr__(name: str) -> Any:
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(where[name]), name)

    return __getattr__
