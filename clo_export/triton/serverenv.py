"""What the Python environments around a Triton model repository need.

Two lists, one source: the packages our Python-backend models import on any Triton server
(written into the repository's ``requirements.txt``), and the test server's environment, which
adds the ``tritonserver`` binary from PyPI's ``nvidia-pytriton`` wheel (Apache-2.0). Triton's
Python backend stub there needs numpy < 2; that pin lives only in the server's environment
(``make triton-env`` → ``.venv-triton``), never in clo-export's own dependencies.

``python -m clo_export.triton.serverenv`` prints the test server's requirements, with the ONNX
Runtime of the calling environment pinned so served detections match in-process ones.
"""

from __future__ import annotations

import sys

PYTRITON = "nvidia-pytriton==0.7.0"  # bundles tritonserver 2.x with the Python backend (Apache-2.0)


def repository_requirements(python_platform: bool) -> list[str]:
    """Packages the repository's Python-backend models import (Triton's containers ship numpy)."""
    reqs = ["numpy>=1.21", "opencv-python-headless>=4.8"]
    if python_platform:
        reqs.append("onnxruntime>=1.16")
    return reqs


def test_server_requirements(onnxruntime_version: str | None = None) -> list[str]:
    """The test server's environment: tritonserver, numpy < 2 for the stub, the models' packages."""
    ort = f"onnxruntime=={onnxruntime_version}" if onnxruntime_version else "onnxruntime>=1.16"
    # opencv-python-headless 4.12 and later need numpy 2
    return [PYTRITON, "numpy>=1.21,<2", "opencv-python-headless>=4.8,<4.12", ort]


def main() -> None:
    """Print the test server's requirements, one per line."""
    try:
        import onnxruntime

        version = onnxruntime.__version__
    except ImportError:
        version = None
    sys.stdout.write("\n".join(test_server_requirements(version)) + "\n")


if __name__ == "__main__":
    main()
