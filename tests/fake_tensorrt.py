"""A recording stand-in for the tensorrt module (no TensorRT exists on our CPU machines).

It answers any attribute with a recording object; classes TensorRT code subclasses (ILogger, the
calibrators) are plain classes. conftest.py's ``fake_trt`` fixture installs it for one test.
"""

from __future__ import annotations

import sys
import types


class Rec:
    """Any TensorRT object: attributes are recorded and cached (so enum members compare by identity)."""

    touched: list = []

    def __init__(self, path: str = "trt", **fields):
        object.__setattr__(self, "_path", path)
        object.__setattr__(self, "_kids", {})
        object.__setattr__(self, "_items", [])
        for k, v in fields.items():
            object.__setattr__(self, k, v)

    def __getattr__(self, name):
        if name == "__members__":
            return {}
        if name.startswith("_"):
            raise AttributeError(name)
        Rec.touched.append(name)
        return self._kids.setdefault(name, Rec(f"{self._path}.{name}"))

    def __setattr__(self, name, value):
        Rec.touched.append(name)
        object.__setattr__(self, name, value)

    def __call__(self, *args, **kwargs):
        if self._path.endswith(".create_network"):
            return NETWORK[0]
        if self._path.endswith(".build_serialized_network"):
            return b"serialized engine"
        return Rec(self._path + "()")

    def __iter__(self):
        return iter(self._items)

    def __int__(self):
        return 0

    __index__ = __int__
    __len__ = __int__

    def __bool__(self):
        return True

    def __lt__(self, other):
        return False

    __gt__ = __le__ = __ge__ = __lt__

    def __or__(self, other):
        return 0

    __ror__ = __lshift__ = __rlshift__ = __or__

    def __str__(self):
        return self._path

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


NETWORK: list = []


def forget_tensorrt() -> None:
    """Polygraphy's modules each cache the tensorrt they first imported; make them import it again."""
    import polygraphy.backend.trt  # noqa: F401 (loads the modules that hold a lazy tensorrt)

    for name, module in list(sys.modules.items()):
        lazy = vars(module).get("trt") if name.startswith("polygraphy") and module is not None else None
        if type(lazy).__name__ == "LazyModule":
            object.__setattr__(lazy, "module", None)


SOFTMAX_NODE, CONV_NODE = "/model.9/Softmax", "/model.24/m.0/Conv"


def install(monkeypatch, version: str) -> types.SimpleNamespace:
    """Make ``import tensorrt`` give a recording stand-in of ``version`` (its network: a Softmax and a Conv layer)."""
    root = Rec()
    classes: dict = {}

    def module_attr(name):
        if name[:1] == "I" and name[1:2].isupper():
            Rec.touched.append(name)
            return classes.setdefault(name, type(name, (), {"__init__": lambda self, *a, **k: None}))
        return getattr(root, name)

    mod = types.ModuleType("tensorrt")
    mod.__version__ = version
    mod.__getattr__ = module_attr
    layers = [
        Rec(
            "softmax",
            name=SOFTMAX_NODE,
            type=root.LayerType.SOFTMAX,
            num_outputs=1,
            set_output_type=lambda j, t: Rec.touched.append("set_output_type"),
        ),
        Rec("conv", name=CONV_NODE, type=root.LayerType.CONVOLUTION, num_outputs=1),
    ]
    network = Rec("network")
    object.__setattr__(network, "_items", layers)
    NETWORK[:] = [network]
    Rec.touched = []
    monkeypatch.setitem(sys.modules, "tensorrt", mod)
    forget_tensorrt()
    monkeypatch.setattr("clo_export.engine.gpu.gpu_identity", lambda device=0: ("Stand-in GPU", (8, 7)))
    return types.SimpleNamespace(root=root, layers=layers)
