"""The layering rules, checked over every module of the package: nothing below the channels imports them, and no
module imports itself back through others (no import cycle).

The graph counts every import statement, at module level, inside functions and under `TYPE_CHECKING` alike: a
deferred or type-only import still ties the two modules together, and a cycle hidden in a function body is the
one that breaks when someone moves the import to the top.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

PACKAGE = "external_agents"
ROOT = Path(__file__).resolve().parents[2]
# Not part of the package: the tests, and what tools put beside the sources.
SKIPPED_DIRS = {"tests", "build", "dist", "node_modules", "__pycache__"}
CHANNELS = f"{PACKAGE}.channels"
# The one module above the channels: it builds the app by mounting them (routes, MCP, auth, error handlers).
COMPOSITION_ROOTS = {f"{PACKAGE}.nexus_app"}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def package_sources() -> dict[str, Path]:
    sources = {}
    for path in ROOT.rglob("*.py"):
        relative = path.relative_to(ROOT).parts
        if any(part.startswith(".") or part in SKIPPED_DIRS or part.endswith(".egg-info") for part in relative[:-1]):
            continue
        sources[module_name(path)] = path
    return sources


def _imported_names(tree: ast.AST) -> Iterable[str]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from a.b import c` imports the module a.b.c when there is one, else the name c of a.b.
            yield from (f"{node.module}.{alias.name}" for alias in node.names)


def _known_module(name: str, modules: Iterable[str]) -> str | None:
    """`name` itself if it is one of `modules`, else the nearest enclosing one (an attribute of a module)."""
    known = set(modules)
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph(sources: Mapping[str, Path]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = {_known_module(name, sources) for name in _imported_names(tree) if name.startswith(PACKAGE)}
        graph[module] = {target for target in targets if target is not None and target != module}
    return graph


def channel_imports_from_below(graph: Mapping[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, channel module) for each module outside the channels that imports one of them."""

    def in_channels(module: str) -> bool:
        return module == CHANNELS or module.startswith(f"{CHANNELS}.")

    return sorted(
        (module, target)
        for module, targets in graph.items()
        if not in_channels(module) and module not in COMPOSITION_ROOTS
        for target in targets
        if in_channels(target)
    )


def find_cycle(graph: Mapping[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None when the graph has none."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(module: str) -> list[str] | None:
        path.append(module)
        on_path.add(module)
        for target in sorted(graph.get(module, ())):
            if target in on_path:
                return [*path[path.index(target) :], target]
            if target not in done:
                cycle = visit(target)
                if cycle:
                    return cycle
        on_path.discard(path.pop())
        done.add(module)
        return None

    for module in sorted(graph):
        if module not in done:
            cycle = visit(module)
            if cycle:
                return cycle
    return None


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(package_sources())


def test_the_graph_covers_the_package(graph):
    # Guards the walk itself: a wrong root or skip rule would make the two rules below pass on nothing.
    assert {f"{PACKAGE}.gateway.operations", f"{PACKAGE}.app_state", f"{PACKAGE}.channels.cli"} <= set(graph)
    assert f"{PACKAGE}.gateway.metrics" in graph[f"{PACKAGE}.app_state"]
    assert not any(module.startswith(f"{PACKAGE}.tests") for module in graph)


def test_nothing_below_the_channels_imports_them(graph):
    assert channel_imports_from_below(graph) == []


def test_no_import_cycle(graph):
    assert find_cycle(graph) is None


def test_the_checks_catch_what_they_forbid():
    stores, channel = f"{PACKAGE}.stores.agents", f"{PACKAGE}.channels.cli"
    assert channel_imports_from_below({stores: {channel}, channel: {stores}}) == [(stores, channel)]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "d": {"a", "c"}}) is None
