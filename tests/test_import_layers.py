"""The package's imports point one way: read with ``ast`` (nothing is imported), every edge checked.

- Layering: the lower layers (postprocess, data, backends, engine, export, models, quantization and the
  modules beside them) never import ``clo_export.pipeline`` or ``clo_export.cli``: not at module level, not
  under ``TYPE_CHECKING`` and not inside a function (a lazy import is still a dependency).
- Cycles: no cycle among the modules' module-level imports, ``TYPE_CHECKING`` blocks included (a cycle of
  types is a design cycle even where it does not run). Function-local imports are left out: they run when the
  function is called, after every module involved has finished importing, which is how a runtime module defers
  heavy or optional work. The root package ``clo_export`` is left out too: importing any of its modules runs
  its ``__init__`` first anyway, and that façade imports its modules only lazily (or for type checking).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "clo_export"
LOWER = (
    "postprocess",
    "thresholds",
    "report",
    "comparator",
    "data",
    "backends",
    "engine",
    "export",
    "models",
    "quantization",
)
UPPER = ("clo_export.pipeline", "clo_export.cli")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if "triton/models" not in p.as_posix()}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.AST, importer: str) -> list[str]:
    """The clo_export modules an import statement names (``from pkg import sub`` names the submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "clo_export"]
    if not isinstance(node, ast.ImportFrom):
        return []
    base = node.module or ""
    if node.level:  # relative: resolve against the importer's package
        pkg = importer.split(".")
        pkg = pkg if MODULES[importer].name == "__init__.py" else pkg[:-1]
        base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
    if base.split(".")[0] != "clo_export":
        return []
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in MODULES]
    return subs or [base]


def imports(name: str) -> list[tuple[str, str]]:
    """(target, where) for every clo_export import in a module; where: 'module', 'type-checking' or 'function'."""
    found: list[tuple[str, str]] = []

    def walk(node: ast.AST, where: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                walk(child, "function")
            elif isinstance(child, ast.If) and _is_type_checking(child):
                walk(child, "type-checking" if where == "module" else where)
            else:
                found.extend((t, where) for t in _targets(child, name))
                walk(child, where)

    walk(ast.parse(MODULES[name].read_text(encoding="utf-8")), "module")
    return found


GRAPH = {name: imports(name) for name in MODULES}


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_lower_layers_never_import_pipeline_or_cli():
    bad = [
        f"{name} -> {target} ({where})"
        for name, edges in GRAPH.items()
        if _layer(name) in LOWER
        for target, where in edges
        if target.startswith(UPPER)
    ]
    assert bad == []


def test_the_walk_sees_the_imports_it_judges():
    """The reader finds known edges of each kind, so an empty list above means something."""
    assert ("clo_export.thresholds", "module") in GRAPH["clo_export.postprocess"]
    assert ("clo_export.pipeline.options", "type-checking") in GRAPH["clo_export.pipeline.check"]
    assert any(t.startswith("clo_export.pipeline") and w == "function" for t, w in GRAPH["clo_export.cli.infer"])
    assert len(MODULES) > 80


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a list of nodes (first = last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle_among_module_level_imports():
    graph = {
        name: sorted(
            {t for t, where in edges if where != "function" and t in MODULES and t not in (name, "clo_export")}
        )
        for name, edges in GRAPH.items()
        if name != "clo_export"
    }
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


@pytest.mark.parametrize(
    "graph, cycle",
    [({"a": ["b"], "b": ["c"], "c": ["a"]}, ["a", "b", "c", "a"]), ({"a": ["b"], "b": [], "c": ["a"]}, None)],
)
def test_the_cycle_finder_finds_cycles(graph, cycle):
    assert find_cycle(graph) == cycle
