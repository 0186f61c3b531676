"""A restricted unpickler for YOLOv5 checkpoints: nothing in the file is ever executed.

Only an allow-list of globals resolves: torch's tensor-rebuild functions and storages, torch
dtypes, ``torch.nn`` layer classes, collections, numpy scalars and dtypes, argparse Namespace,
paths, and the block classes registered by plugins (matched by class name, whichever module the
user pasted them into). Any other global, such as ``os.system`` in a ``__reduce__``, is refused
with an error naming it, before anything is called.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import copyreg
import importlib
import pathlib
import pickle
from typing import Any

import numpy as np
import torch
from torch import nn

from clo_export.errors import CloExportError
from clo_export.registry import REGISTRY

try:
    from numpy._core import multiarray as _np_multiarray
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _np_multiarray

_NUMPY_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")

SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("collections", "defaultdict"): collections.defaultdict,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "slice"): slice,
    ("builtins", "object"): object,
    ("copyreg", "_reconstructor"): copyreg._reconstructor,
    ("_codecs", "encode"): codecs.encode,  # how protocol-2 pickles spell bytes
    ("argparse", "Namespace"): argparse.Namespace,
    ("pathlib", "PosixPath"): pathlib.PurePosixPath,
    ("pathlib", "WindowsPath"): pathlib.PureWindowsPath,
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
    ("pathlib", "PureWindowsPath"): pathlib.PureWindowsPath,
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): torch._utils._rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): torch._tensor._rebuild_from_type_v2,
    ("torch.nn.parameter", "Parameter"): nn.Parameter,
    ("torch", "Size"): torch.Size,
    ("torch", "device"): torch.device,
    ("torch", "Tensor"): torch.Tensor,
    ("numpy", "dtype"): np.dtype,
    ("numpy", "ndarray"): np.ndarray,
    **{(m, "scalar"): _np_multiarray.scalar for m in _NUMPY_MODULES},
    **{(m, "_reconstruct"): _np_multiarray._reconstruct for m in _NUMPY_MODULES},
}


def resolve_global(module: str, name: str) -> Any:
    """The object a pickle's GLOBAL may name, or CloExportError; never imports ``module``."""
    if (module, name) in SAFE_GLOBALS:
        return SAFE_GLOBALS[(module, name)]
    if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
        return getattr(torch, name)
    if module == "numpy.dtypes" and name.endswith("DType"):
        return getattr(importlib.import_module("numpy.dtypes"), name)
    if module.startswith("torch.nn.modules."):
        cls = getattr(nn, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
    if name in REGISTRY.classes:
        return REGISTRY.classes[name]
    raise CloExportError(
        f"checkpoint refers to '{module}.{name}', which clo-export does not load (only YOLOv5/CloFormer "
        "blocks, torch tensors and nn layers); nothing from the file was executed. If it is a block of "
        "yours, register it with --plugin my_block.py"
    )


class SafeUnpickler(pickle.Unpickler):
    """pickle.Unpickler whose find_class only returns allow-listed objects."""

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles (torch.save's default) spell Python 3 names the Python 2 way
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        return resolve_global(_compat_pickle.IMPORT_MAPPING.get(module, module), name)


class SafePickleModule:
    """The ``pickle_module`` handed to ``torch.load``: pickle, with the restricted Unpickler."""

    __name__ = "clo_export_safe_pickle"
    Unpickler = SafeUnpickler

    @staticmethod
    def load(file: Any, **kwargs: Any) -> Any:
        return SafeUnpickler(file, **kwargs).load()

