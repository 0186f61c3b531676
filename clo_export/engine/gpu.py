"""Which GPU this is (name, compute capability), through the CUDA runtime Polygraphy already loaded.

Polygraphy's CUDA wrapper (``polygraphy.cuda.wrapper()``) finds libcudart and opens it with
ctypes; we ask it three documented runtime calls (cudaSetDevice, cudaDeviceGetAttribute,
cudaGetDeviceProperties) for the engine sidecar and its compatibility check. No pycuda, no
cuda-python.
"""

from __future__ import annotations

import ctypes
from typing import Any, Tuple

from clo_export.errors import CloExportError

# cudaDeviceAttr values (cuda_runtime_api.h): cudaDevAttrComputeCapabilityMajor / Minor
CC_MAJOR, CC_MINOR = 75, 76
PROPS_BYTES = 4096  # cudaDeviceProp is ~1 KB in CUDA 11-13; its first field is char name[256]


def cudart() -> Any:
    """libcudart as Polygraphy loaded it; a one-line error where there is no CUDA runtime."""
    from polygraphy import cuda
    from polygraphy.exception import PolygraphyException

    try:
        return cuda.wrapper().handle
    except (OSError, PolygraphyException) as e:
        raise CloExportError(
            f"cannot load the CUDA runtime (libcudart: {str(e).splitlines()[0]}); on Jetson it comes "
            "with JetPack, elsewhere install the CUDA toolkit or pip install nvidia-cuda-runtime-cu12"
        ) from None


def _check(status: int, call: str) -> None:
    if status != 0:
        raise CloExportError(
            f"CUDA {call} failed with error {status}; check that a GPU is visible (nvidia-smi, CUDA_VISIBLE_DEVICES)"
        )


def use_device(device: int) -> None:
    """Make ``device`` the current CUDA device of this thread (engines and buffers go there)."""
    _check(cudart().cudaSetDevice(int(device)), f"cudaSetDevice({device})")


def gpu_identity(device: int = 0) -> Tuple[str, Tuple[int, int]]:
    """(GPU name, compute capability) of ``device``."""
    lib = cudart()
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(lib.cudaDeviceGetAttribute(ctypes.byref(major), CC_MAJOR, int(device)), "cudaDeviceGetAttribute")
    _check(lib.cudaDeviceGetAttribute(ctypes.byref(minor), CC_MINOR, int(device)), "cudaDeviceGetAttribute")
    props = ctypes.create_string_buffer(PROPS_BYTES)
    get = getattr(lib, "cudaGetDeviceProperties_v2", None) or lib.cudaGetDeviceProperties  # CUDA 12+ / 11
    _check(get(props, int(device)), "cudaGetDeviceProperties")
    name = props.raw[:256].split(b"\0", 1)[0].decode("utf-8", "replace")
    return name, (major.value, minor.value)
