"""Every talkhead module imports, and the package's module-level import graph has no cycle."""
from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import talkhead

PACKAGE_DIR = Path(talkhead.__file__).parent


def _modules() -> dict[str, Path]:
    """``{"talkhead.audio": path, "talkhead.train": path/__init__.py, ...}`` of every module file."""
    out = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = ["talkhead", *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _top_level_imports(node: ast.AST):
    """Import statements executed at import time: the module body, including inside top-level
    ``if``/``try`` blocks, but not inside functions or classes."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child
        elif isinstance(child, (ast.If, ast.Try, ast.With)) or type(child).__name__ == "TryStar":
            yield from _top_level_imports(child)


def import_graph() -> dict[str, set[str]]:
    """``module -> intra-package modules it imports at module level`` (``from .x import name`` counts
    as an edge to ``x.name`` when that is a module, else to ``x``)."""
    graph = {}
    for name, path in MODULES.items():
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for imp in _top_level_imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(imp, ast.Import):
                targets = [a.name for a in imp.names]
            else:
                base = package[:len(package) - imp.level + 1] if imp.level else []
                mod = ".".join(base + ([imp.module] if imp.module else [])) if imp.level else imp.module
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in imp.names]
            deps.update(t for t in targets if t in MODULES and t != name)
        graph[name] = deps
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                return stack[stack.index(v):] + [v]
            if v not in state and (found := visit(v)):
                return found
        stack.pop()
        state[u] = 2
        return None

    for m in sorted(graph):
        if m not in state and (found := visit(m)):
            return found
    return None


def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_graph_sees_relative_imports():
    graph = import_graph()
    assert "talkhead.errors" in graph["talkhead.audio"]
    assert "talkhead.mssync.syncers" in graph["talkhead.train.syncers"]
    assert len(graph) == len(MODULES) > 40


def test_no_import_cycle_in_talkhead():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "talkhead.__main__"))
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


def _imports_anywhere(name: str) -> set[str]:
    """Intra-package modules ``name`` imports anywhere in its file, inside functions too (a
    function-level import is still an edge of the layering)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    deps = set()
    for imp in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(imp, ast.Import):
            targets = [a.name for a in imp.names]
        elif isinstance(imp, ast.ImportFrom):
            base = package[:len(package) - imp.level + 1] if imp.level else []
            mod = ".".join(base + ([imp.module] if imp.module else [])) if imp.level else imp.module
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in MODULES else mod for a in imp.names]
        else:
            continue
        deps.update(t for t in targets if t in MODULES and t != name)
    return deps


LOW_LAYERS = {"talkhead.errors": set(), "talkhead.constants": set()}
"""Layer-1 modules and what they may import of ours (nothing)."""

FACE_STAGES = ["talkhead.image", "talkhead.crop", "talkhead.landmarks", "talkhead.landmarks.base",
               "talkhead.landmarks.dlib", "talkhead.landmarks.fan"]
"""Layer-3 photo stages: they may import layers 1-2 and each other, nothing above."""


def test_lowest_layers_import_nothing_of_ours():
    for name, allowed in LOW_LAYERS.items():
        assert _imports_anywhere(name) <= allowed, name


def test_devices_does_not_import_the_options():
    assert "talkhead.options" not in _imports_anywhere("talkhead.devices")


def test_photo_stages_import_only_lower_layers():
    allowed = {"talkhead.errors", "talkhead.constants", "talkhead.progress", "talkhead.memory",
               "talkhead.io", "talkhead.ffmpeg", "talkhead.checkpoints", *FACE_STAGES}
    for name in FACE_STAGES:
        assert _imports_anywhere(name) <= allowed, (name, _imports_anywhere(name) - allowed)
