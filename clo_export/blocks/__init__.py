"""Blocks a model YAML can name, and the loader for user plugins.

Built-in plugins: :mod:`clo_export.blocks.yolov5` (YOLOv5 v7.0 core blocks) and
:mod:`clo_export.blocks.cloformer` (CloFormer's EfficientAttention). User plugins are Python
files passed with ``--plugin`` or modules exposed under the ``clo_export.plugins`` entry point;
they call :func:`clo_export.registry.register_block` / :func:`register_class`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import logging
import sys
from collections.abc import Iterable
from importlib.metadata import entry_points
from pathlib import Path

from clo_export.errors import CloExportError

log = logging.getLogger(__name__)

BUILTIN = ("clo_export.blocks.yolov5", "clo_export.blocks.cloformer")
ENTRY_POINT_GROUP = "clo_export.plugins"
_loaded: set[str] = set()


def load_plugin_file(path: str | Path) -> None:
    """Import a user plugin file once; it registers its blocks as a side effect."""
    path = Path(path).resolve()
    if str(path) in _loaded:
        return
    if not path.exists():
        raise CloExportError(f"plugin '{path}' does not exist; pass --plugin path/to/my_block.py")
    if not path.is_file() or path.suffix != ".py":
        raise CloExportError(f"plugin '{path}' is not a .py file; pass --plugin path/to/my_block.py")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    name = f"clo_export_user_plugin_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except CloExportError:
        raise
    except Exception as e:
        del sys.modules[name]
        raise CloExportError(f"plugin '{path}' failed to import: {type(e).__name__}: {e}") from e
    _loaded.add(str(path))
    log.info("loaded plugin %s", path)


def load_entry_points() -> None:
    """Import every module registered under the ``clo_export.plugins`` entry point."""
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.value in _loaded:
            continue
        try:
            ep.load()
        except Exception as e:
            raise CloExportError(f"plugin entry point '{ep.name}' ({ep.value}) failed to load: {e}") from e
        _loaded.add(ep.value)


def load_plugins(files: Iterable[str | Path] = ()) -> None:
    """Make every block available: built-ins, installed entry points, then user files."""
    for name in BUILTIN:
        importlib.import_module(name)
    load_entry_points()
    for f in files:
        load_plugin_file(f)
