"""A restricted unpickler for YOLOv5 checkpoints: nothing in the file is ever executed.

Only an allow-list of globals resolves: torch's tensor-rebuild functions and storages, torch
dtypes, ``torch.nn`` layer classes, collections, numpy scalars and dtypes, argparse Namespace,
paths, and the block classes registered by plugins (matched by class name, whichever module the
user pasted them into). Any other global, such as ``os.system`` in a ``__reduce__``, is refused
with an error naming it, before anything is called.

Resolving a global is not enough to be safe: a pickle may *call* what it resolved with
arguments of its choosing (``torch.nn.Linear(20000, 20000)`` allocates 1.6 GB). So the
unpickler (the pure-Python one, whose opcodes can be checked one by one) also decides what may be
called and with what:

* classes (modules, blocks, tensors, arrays) are only ever created empty, ``cls.__new__(cls)``,
  and filled from their state; no constructor runs with arguments from the file;
* the few functions that may be called (tensor rebuilds, containers, dtypes, paths) get their
  arguments checked first;
* tensor storage is bounded by the file: the bytes all storages claim may not exceed the
  checkpoint's size, so a 100-byte file cannot make us allocate gigabytes.
"""

from __future__ import annotations

import _compat_pickle
import argparse
import codecs
import collections
import copyreg
import importlib
import math
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


def _refuse(what: str) -> CloExportError:
    return CloExportError(
        f"checkpoint asks to {what}, which a YOLOv5 checkpoint never does; refused before "
        "anything ran or was allocated. The file is damaged or crafted: use the best.pt YOLOv5 wrote"
    )


def _is_int_tuple(v: Any) -> bool:
    return isinstance(v, (tuple, torch.Size)) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


def _no_hooks(hooks: Any) -> bool:
    return hooks is None or (isinstance(hooks, dict) and not hooks)


def _check_tensor_rebuild(args: tuple) -> None:
    # _rebuild_tensor_v2(storage, offset, size, stride, requires_grad, backward_hooks[, metadata])
    if (
        len(args) < 6
        or not isinstance(args[0], (torch.TypedStorage, torch.UntypedStorage))
        or not isinstance(args[1], int)
        or not _is_int_tuple(args[2])
        or not _is_int_tuple(args[3])
        or not _no_hooks(args[5])
    ):
        raise _refuse("rebuild a tensor from something other than a stored tensor")


def _check_parameter_rebuild(args: tuple) -> None:
    # _rebuild_parameter(data, requires_grad, backward_hooks[, state])
    if len(args) < 3 or not isinstance(args[0], torch.Tensor) or not _no_hooks(args[2]):
        raise _refuse("make a parameter from something other than a tensor")


def _check_parameter(args: tuple) -> None:
    # Parameter(data, requires_grad): data must be a tensor the file holds
    if len(args) > 2 or (args and args[0] is not None and not isinstance(args[0], torch.Tensor)):
        raise _refuse("make a parameter from something other than a stored tensor")


def _check_from_type(args: tuple) -> None:
    # _rebuild_from_type_v2(func, new_type, args, state): func(*args) runs inside torch, so check it here
    if len(args) != 4 or args[1] not in (torch.Tensor, nn.Parameter) or not isinstance(args[2], tuple):
        raise _refuse("rebuild a tensor of an unknown type")
    check = (
        _CALLS.get(args[0]) if args[0] in (torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter) else None
    )
    if check is None:
        raise _refuse(f"call {getattr(args[0], '__name__', args[0])!r} while rebuilding a tensor")
    check(args[2])


def _check_strings(args: tuple) -> None:
    if not all(isinstance(a, str) for a in args):
        raise _refuse("make a path from something other than strings")


def _check_encode(args: tuple) -> None:
    if len(args) != 2 or not isinstance(args[0], str) or args[1] not in ("latin1", "latin-1"):
        raise _refuse("call codecs.encode other than to spell bytes")


def _check_reconstruct(args: tuple) -> None:
    # numpy pickles arrays as _reconstruct(ndarray, (0,), b'b') and fills them from their state
    if len(args) != 3 or args[0] is not np.ndarray or tuple(args[1]) != (0,):
        raise _refuse("create a numpy array of a size of its choosing")


def _check_dtype(args: tuple) -> None:
    if not args or not isinstance(args[0], str) or len(args) > 3:
        raise _refuse("make a numpy dtype from something other than its name")


def _check_size(args: tuple) -> None:
    if len(args) > 1 or (args and not _is_int_tuple(tuple(args[0]) if isinstance(args[0], (list, tuple)) else None)):
        raise _refuse("make a torch.Size from something other than integers")


def _check_device(args: tuple) -> None:
    if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
        raise _refuse("make a torch.device from something other than its name")


def _check_no_args(args: tuple) -> None:
    if args:
        raise _refuse("pass arguments to a constructor")


def _check_defaultdict(args: tuple) -> None:
    if args and args[0] is not None:
        raise _refuse("make a defaultdict with a factory")


def _check_reconstructor(args: tuple) -> None:
    # copyreg._reconstructor(cls, base, state): protocol 0/1 spelling of cls.__new__(cls); base must be object
    if len(args) != 3 or args[1] is not object or not isinstance(args[0], type):
        raise _refuse("rebuild an object through a base class constructor")


def _any(args: tuple) -> None:
    """Containers and scalars filled from data the pickle holds: bounded by the file."""


_CALLS: dict[Any, Any] = {
    torch._utils._rebuild_tensor_v2: _check_tensor_rebuild,
    torch._utils._rebuild_parameter: _check_parameter_rebuild,
    torch._utils._rebuild_parameter_with_state: _check_parameter_rebuild,
    torch._tensor._rebuild_from_type_v2: _check_from_type,
    nn.Parameter: _check_parameter,
    collections.OrderedDict: _any,
    collections.defaultdict: _check_defaultdict,
    set: _any,
    frozenset: _any,
    slice: _any,
    copyreg._reconstructor: _check_reconstructor,
    codecs.encode: _check_encode,
    argparse.Namespace: _check_no_args,
    pathlib.PurePosixPath: _check_strings,
    pathlib.PureWindowsPath: _check_strings,
    torch.Size: _check_size,
    torch.device: _check_device,
    np.dtype: _check_dtype,
    _np_multiarray.scalar: _any,  # scalar(dtype, bytes): as many bytes as the file holds
    _np_multiarray._reconstruct: _check_reconstruct,
}


def check_call(func: Any, args: tuple) -> None:
    """Refuse a call the pickle asks for unless ``func`` is allow-listed for calling and its arguments pass."""
    check = _CALLS.get(func) if _hashable(func) else None
    if check is None:
        name = getattr(func, "__qualname__", None) or type(func).__name__
        if isinstance(func, type):
            raise _refuse(f"construct {name}{_short(args)}")
        raise _refuse(f"call {name}{_short(args)}")
    check(tuple(args))


def _hashable(obj: Any) -> bool:
    try:
        hash(obj)
    except TypeError:
        return False
    return True


def _short(args: Any) -> str:
    text = repr(args) if isinstance(args, tuple) else f"({args!r})"
    return text if len(text) <= 60 else text[:57] + "…)"


def check_state(obj: Any, state: Any) -> None:
    """Refuse object states that would allocate on the file's say or install callables (hooks)."""
    if isinstance(obj, nn.Module):
        if not isinstance(state, dict):
            raise _refuse(f"give a {type(obj).__name__} a state that is not a dict")
        for key, value in state.items():
            if isinstance(key, str) and key.endswith("hooks") and not _no_hooks(value):
                raise _refuse(f"install {key} on a {type(obj).__name__}")
    elif isinstance(obj, np.ndarray):
        # (version, shape, dtype, is_fortran, rawdata): the data must hold every element
        if (
            not isinstance(state, tuple)
            or len(state) != 5
            or not _is_int_tuple(tuple(state[1]))
            or not isinstance(state[2], np.dtype)
        ):
            raise _refuse("fill a numpy array from a malformed state")
        count = math.prod(state[1])
        data = state[4]
        if state[2].hasobject:
            ok = isinstance(data, list) and len(data) == count
        else:
            ok = isinstance(data, (bytes, bytearray)) and len(data) == count * state[2].itemsize
        if not ok or min(state[1], default=0) < 0:
            raise _refuse(
                f"make a numpy array of shape {tuple(state[1])} from {len(data) if hasattr(data, '__len__') else '?'} "
                f"items"
            )


class StorageBudget:
    """Tensor bytes the storages of one checkpoint may claim in total: at most the file's size."""

    def __init__(self, limit: int | None):
        self.limit = limit
        self.used = 0
        self.keys: set[Any] = set()

    def charge(self, pid: Any) -> None:
        """Count a storage's bytes (once per storage key) and refuse when the file cannot hold them."""
        if not isinstance(pid, tuple) or len(pid) < 5 or pid[0] not in ("storage", b"storage"):
            raise _refuse(f"load a persistent object {_short(pid)}")
        storage_type, key, numel = pid[1], pid[2], pid[4]
        dtype = getattr(storage_type, "dtype", None)
        if not isinstance(dtype, torch.dtype) or not isinstance(numel, int) or numel < 0:
            raise _refuse(f"load a storage described as {_short(pid)}")
        if key in self.keys:
            return
        self.keys.add(key)
        self.used += numel * dtype.itemsize
        if self.limit is not None and self.used > self.limit:
            raise CloExportError(
                f"checkpoint claims at least {self.used:,} bytes of tensors, but the file holds only {self.limit:,} "
                f"bytes; "
                "it is truncated or crafted, and nothing was allocated for it: use the best.pt YOLOv5 wrote"
            )


class SafeUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Pure-Python pickle.Unpickler: allow-listed globals, checked calls, empty-built classes, bounded storage."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]
    budget = StorageBudget(None)

    def find_class(self, module: str, name: str) -> Any:
        # protocol-2 pickles (torch.save's default) spell Python 3 names the Python 2 way
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        return resolve_global(_compat_pickle.IMPORT_MAPPING.get(module, module), name)

    @property
    def persistent_load(self) -> Any:  # type: ignore[override]
        loader = self.__dict__.get("_persistent_load")
        if loader is None:
            raise pickle.UnpicklingError("unsupported persistent id encountered")
        return loader

    @persistent_load.setter
    def persistent_load(self, loader: Any) -> None:
        """torch.load sets its storage loader here; every storage is charged to the budget before it loads."""

        def bounded(pid: Any) -> Any:
            self.budget.charge(pid)
            return loader(pid)

        self.__dict__["_persistent_load"] = bounded

    def load_reduce(self) -> None:
        args = self.stack.pop()
        func = self.stack[-1]
        if not isinstance(args, tuple):
            raise _refuse("call something with malformed arguments")
        check_call(func, args)
        self.stack[-1] = func(*args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        if kwargs:
            raise _refuse(f"construct {getattr(cls, '__name__', cls)} with keyword arguments")
        self.append(self._new(cls, args))

    def _new(self, cls: Any, args: Any) -> Any:
        """``cls.__new__(cls)``: objects are created empty and filled from their state, never constructed."""
        if not isinstance(cls, type):
            raise _refuse(f"create an object of {cls!r}, which is not a class")
        if args:
            raise _refuse(f"construct {cls.__name__}{_short(tuple(args))}")
        return cls.__new__(cls)

    def _instantiate(self, klass: Any, args: tuple) -> None:  # protocol 0/1 INST and OBJ
        if isinstance(klass, type) and not args:
            self.append(klass.__new__(klass))
            return
        check_call(klass, tuple(args))
        self.append(klass(*args))

    def load_build(self) -> None:
        state = self.stack[-1]
        obj = self.stack[-2]
        check_state(obj, state)
        super().load_build()

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


class SafePickleModule:
    """The ``pickle_module`` handed to ``torch.load``: pickle, with the restricted Unpickler.

    ``SafePickleModule(max_storage_bytes)`` bounds the tensor bytes the whole load may claim
    (pass the checkpoint's file size); the class itself can be used unbounded.
    """

    __name__ = "clo_export_safe_pickle"
    Unpickler = SafeUnpickler

    def __init__(self, max_storage_bytes: int | None = None):
        budget = StorageBudget(max_storage_bytes)
        self.Unpickler = type("BoundedSafeUnpickler", (SafeUnpickler,), {"budget": budget})

    def load(self, file: Any, **kwargs: Any) -> Any:
        return self.Unpickler(file, **kwargs).load()
