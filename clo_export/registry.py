"""Registry of the blocks a model YAML can name, and of the classes checkpoints may pickle.

Plugins (built-in ones in ``clo_export.blocks``, user files passed with ``--plugin`` and
packages exposing the ``clo_export.plugins`` entry point) call :func:`register_block` and
:func:`register_class`. Nothing here imports torch, so ``--help`` stays fast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from clo_export.errors import CloExportError

log = logging.getLogger(__name__)


@dataclass
class LayerContext:
    """What a block's parse function sees of one YAML row (YOLOv5 parse_model's locals)."""

    index: int
    f: int | list[int]
    n: int
    args: list[Any]
    kwargs: dict[str, Any]
    ch: list[int]
    width_multiple: float
    nc: int

    @property
    def c1(self) -> int:
        """Input channels (of the first input when several)."""
        return self.ch[self.f] if isinstance(self.f, int) else self.ch[self.f[0]]


@dataclass
class LayerSpec:
    """How to construct one layer: ``cls(*args, **kwargs)`` repeated ``n`` times, giving ``c2`` channels."""

    args: list[Any]
    kwargs: dict[str, Any]
    c2: int
    n: int


ParseFn = Callable[[LayerContext], LayerSpec]
ExportFn = Callable[[Any, Any], None]


@dataclass(frozen=True)
class Block:
    """A YAML-nameable block: its class, how YAML args become constructor args, and its hooks."""

    name: str
    cls: type
    parse: ParseFn
    hparams: tuple[str, ...] = ()
    export: ExportFn | None = None
    source: str = "builtin"


@dataclass
class Registry:
    """Blocks by YAML name and classes by the class name found in checkpoints."""

    blocks: dict[str, Block] = field(default_factory=dict)
    classes: dict[str, type] = field(default_factory=dict)

    def block(self, name: str, index: int | None = None) -> Block:
        """Look up a YAML module name; unknown names list the known ones."""
        try:
            return self.blocks[name]
        except KeyError:
            where = f"layer {index}: " if index is not None else ""
            known = ", ".join(sorted(self.blocks))
            raise CloExportError(
                f"{where}unknown module '{name}'; known: {known}. "
                "Register your block with --plugin my_block.py (see docs/models.md, 'Your own blocks')"
            ) from None

    def block_for(self, module: Any) -> Block | None:
        """The block registered for a module's class or its nearest registered base class (MRO order).

        A subclass of a registered block keeps its parent's hooks unless it is registered itself.
        """
        by_class: dict[type, Block] = {}
        for b in self.blocks.values():
            by_class.setdefault(b.cls, b)
        return next((by_class[c] for c in type(module).__mro__ if c in by_class), None)

    def add(self, block: Block, override: bool = False) -> None:
        """Register ``block``; replacing a different block of the same name warns unless ``override``."""
        old = self.blocks.get(block.name)
        if old is not None and old.cls is not block.cls and not override:
            log.warning(
                "block '%s': %s (%s) replaces %s (%s); pass override=True to register_block to silence this",
                block.name,
                qualname(block.cls),
                block.source,
                qualname(old.cls),
                old.source,
            )
        self.blocks[block.name] = block


def qualname(cls: type) -> str:
    """``module.Class`` for messages."""
    return f"{cls.__module__}.{cls.__qualname__}"


REGISTRY = Registry()


def make_divisible(x: float, divisor: int = 8) -> int:
    """Round channels up to a multiple of ``divisor`` (YOLOv5's width rule)."""
    return math.ceil(x / divisor) * divisor


def parse_channels(ctx: LayerContext) -> LayerSpec:
    """Conv-like: ``[c2, *rest]`` -> ``(c1, c2*width, *rest)``."""
    c2 = ctx.args[0]
    if c2 != ctx.nc + 5:
        c2 = make_divisible(c2 * ctx.width_multiple, 8)
    return LayerSpec([ctx.c1, c2, *ctx.args[1:]], dict(ctx.kwargs), c2, ctx.n)


def parse_repeated(ctx: LayerContext) -> LayerSpec:
    """C3-like: as :func:`parse_channels`, with the depth ``n`` inserted as third argument."""
    spec = parse_channels(ctx)
    spec.args.insert(2, ctx.n)
    spec.n = 1
    return spec


def parse_concat(ctx: LayerContext) -> LayerSpec:
    """Concat: output channels are the sum of the inputs'."""
    froms = [ctx.f] if isinstance(ctx.f, int) else ctx.f
    return LayerSpec(list(ctx.args), dict(ctx.kwargs), sum(ctx.ch[x] for x in froms), ctx.n)


def parse_plain(ctx: LayerContext) -> LayerSpec:
    """Arguments passed as written; channels unchanged (e.g. nn.Upsample)."""
    return LayerSpec(list(ctx.args), dict(ctx.kwargs), ctx.c1, ctx.n)


def parse_same(ctx: LayerContext) -> LayerSpec:
    """Channel-preserving block (most attention modules): ``(c1, *args)``, output c1."""
    return LayerSpec([ctx.c1, *ctx.args], dict(ctx.kwargs), ctx.c1, ctx.n)


PARSERS: dict[str, ParseFn] = {
    "channels": parse_channels,
    "repeated": parse_repeated,
    "concat": parse_concat,
    "plain": parse_plain,
    "same": parse_same,
}


def register_class(cls: type, *aliases: str) -> type:
    """Allow ``cls`` in checkpoints under its own class name and any ``aliases``."""
    for name in (cls.__name__, *aliases):
        REGISTRY.classes[name] = cls
    return cls


def register_block(
    name: str | tuple[str, ...],
    cls: type | None = None,
    *,
    kind: str | ParseFn = "same",
    hparams: tuple[str, ...] = (),
    export: ExportFn | None = None,
    aliases: tuple[str, ...] = (),
    source: str = "builtin",
    override: bool = False,
) -> Any:
    """Register a block under its YAML name(s); usable as a class decorator.

    ``kind`` says how YAML args become constructor args ("channels", "repeated", "concat",
    "plain", "same") or is a custom parse function. ``hparams`` names constructor arguments
    read back from a pickled instance when rebuilding a checkpoint. ``export(module, ctx)``
    switches the module into its static-shape export form. Registering a name that another
    class already holds (a plugin's own ``Conv``) replaces it with a warning naming both;
    ``override=True`` says the replacement is meant and silences the warning.
    """

    def add(c: type) -> type:
        parse = PARSERS[kind] if isinstance(kind, str) else kind
        for n in (name,) if isinstance(name, str) else name:
            REGISTRY.add(Block(n, c, parse, hparams, export, source), override)
        register_class(c, *aliases)
        return c

    return add(cls) if cls is not None else add


@dataclass(frozen=True)
class ExportContext:
    """What a block's export hook learns of its input: static shapes, and whether batch is dynamic."""

    input_shapes: tuple[tuple[int, ...], ...]
    dynamic_batch: bool

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of the first input, batch as -1 when the batch is dynamic."""
        b, *rest = self.input_shapes[0]
        return (-1 if self.dynamic_batch else b, *rest)
