"""talkhead's layering, enforced: every module imports, every import (also inside functions) names a
module that exists, the import graph has no cycle, and no module imports a higher layer.

The graph has an edge ``a -> b`` for every import of ``b`` anywhere in ``a``'s file: at module level,
inside functions, classes and methods, under ``if TYPE_CHECKING``; and for every string literal that
names a talkhead module as ``"talkhead.x.y"`` or ``"talkhead.x.y:attribute"`` (the checkpoint
registry's layout and config hooks, ``importlib.import_module`` targets). A dynamic import must spell
its target as such a literal somewhere in the importing module, or this test cannot see it.

:data:`LAYERS` is the one definition of the layers; README.md's "Layers" section mirrors it (checked
below). An upward edge is allowed only when it is listed in :data:`ALLOWED_UPWARD` with its reason.
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

import talkhead

PACKAGE_DIR = Path(talkhead.__file__).parent
README = PACKAGE_DIR.parent / "README.md"

LAYERS: dict[int, str] = {
    1: "errors constants progress memory",
    2: "io ffmpeg checkpoints devices",
    3: "audio image landmarks/ crop facetrack compose video keypoints rendering restore fomm/ mssync/ smac/ syncnet/ gfpgan/",
    4: "options renderers store/",
    5: "pipeline live reenact batch score",
    6: "cli cli_common cli_options cli_train ui doctor integrations/ train/ __init__ __main__",
}
"""Layer number -> the modules in it, lowest first. ``x`` is ``talkhead/x.py``; ``x/`` is the package
``talkhead/x`` and every module under it (``store/`` also covers today's ``store.py``); ``__init__``
is ``talkhead/__init__.py``, the public API. A module imports only from its own layer or below."""

ALLOWED_UPWARD: dict[tuple[str, str], str] = {}
"""``{(importer, imported): reason}``: the only edges allowed to point to a higher layer. Keep it short;
prefer moving the definition down to the module that owns it."""


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


def layer_of(module: str) -> int | None:
    """The layer of a dotted module name under :data:`LAYERS`, or ``None`` when it has none."""
    parts = module.split(".")[1:]
    for layer, names in LAYERS.items():
        for entry in names.split():
            if not parts:
                if entry == "__init__":
                    return layer
            elif entry == parts[0] + "/" or (entry == parts[0] and len(parts) == 1):
                return layer
    return None


_MODULE_STRING = re.compile(r"^(talkhead(?:\.\w+)+)(:[\w.]+)?$")


class _ImportVisitor(ast.NodeVisitor):
    """Collects ``edges = {imported module: where}`` for one module, ``where`` =
    ``"path:line (how, scope)"``, and ``missing``: imports of talkhead modules that do not exist (a
    function-level one fails only when the function runs)."""

    def __init__(self, name: str, path: Path):
        self.name, self.path = name, path
        self.package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        self.scope: list[str] = []
        self.edges: dict[str, str] = {}
        self.missing: dict[str, str] = {}

    def _where(self, node: ast.AST, how: str) -> str:
        scope = f"in {'.'.join(self.scope)}" if self.scope else "at module level"
        return f"{self.path.relative_to(PACKAGE_DIR.parent)}:{node.lineno} ({how} {scope})"

    def _add(self, module: str, node: ast.AST, how: str = "import") -> None:
        """An edge to ``module``, which must exist (when it is ours)."""
        if module != "talkhead" and not module.startswith("talkhead."):
            return
        if module not in MODULES:
            self.missing.setdefault(module, self._where(node, how))
        elif module != self.name and module not in self.edges:
            self.edges[module] = self._where(node, how)

    def _relative(self, level: int, module: str | None) -> str:
        base = self.package[:len(self.package) - level + 1]
        return ".".join(base + ([module] if module else []))

    def _scoped(self, node) -> None:
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    visit_FunctionDef = visit_AsyncFunctionDef = visit_ClassDef = _scoped

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        mod = self._relative(node.level, node.module) if node.level else node.module
        for alias in node.names:
            # ``from .pkg import sub`` imports the module ``pkg.sub``; ``from .mod import name`` imports ``mod``
            self._add(f"{mod}.{alias.name}" if f"{mod}.{alias.name}" in MODULES else mod, node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str) and (m := _MODULE_STRING.match(node.value)):
            dotted, attribute = m.groups()
            if not attribute:  # "talkhead.fomm.FOMM": the longest module prefix, if any below the root
                while dotted not in MODULES and dotted.count(".") > 1:
                    dotted = dotted.rsplit(".", 1)[0]
                if dotted not in MODULES:
                    return
            self._add(dotted, node, how="string")

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        arg = node.args[0] if node.args else None
        if (called == "import_module" and isinstance(arg, ast.Constant) and isinstance(arg.value, str)
                and arg.value.startswith(".")):
            level = len(arg.value) - len(arg.value.lstrip("."))
            self._add(self._relative(level, arg.value.lstrip(".") or None), node, how="import_module")
        self.generic_visit(node)


def _visit_all() -> dict[str, _ImportVisitor]:
    out = {}
    for name, path in MODULES.items():
        out[name] = _ImportVisitor(name, path)
        out[name].visit(ast.parse(path.read_text(encoding="utf-8")))
    return out


def import_edges() -> dict[str, dict[str, str]]:
    """``{importer: {imported: "talkhead/x.py:LINE (import in f)"}}`` over every talkhead module (the
    first place each edge appears)."""
    return {name: visitor.edges for name, visitor in _visit_all().items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of ``graph``, or ``None``."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(u: str) -> list[str] | None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph.get(u, ())):
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


def upward_edges(edges: dict[str, dict[str, str]]) -> dict[tuple[str, str], str]:
    """``{(importer, imported): where}`` of every edge into a higher layer."""
    return {(a, b): where for a, deps in edges.items() for b, where in deps.items()
            if layer_of(b) is not None and layer_of(a) is not None and layer_of(b) > layer_of(a)}


# --- the checker itself ---------------------------------------------------------------------------

def test_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_layer_lookup():
    assert layer_of("talkhead") == 6 and layer_of("talkhead.__main__") == 6
    assert layer_of("talkhead.errors") == 1
    assert layer_of("talkhead.store") == layer_of("talkhead.store.paths") == 4
    assert layer_of("talkhead.fomm") == layer_of("talkhead.fomm.blocks") == 3
    assert layer_of("talkhead.audio.sub") is None  # a module entry does not cover a package's members
    assert layer_of("talkhead.nonesuch") is None


def test_graph_sees_every_kind_of_import():
    edges = import_edges()
    assert "talkhead.errors" in edges["talkhead.audio"]                        # from .errors import
    assert "talkhead.mssync.syncers" in edges["talkhead.train.syncers"]        # from ..mssync.syncers import
    assert "talkhead.landmarks.base" in edges["talkhead.landmarks.dlib"]       # from .base import
    assert "(import in " in edges["talkhead.cli"]["talkhead.doctor"]           # inside a function
    assert "talkhead.pipeline" in edges["talkhead"]                            # the lazy public API's strings
    assert len(edges) == len(MODULES) > 40


def test_graph_sees_strings_and_function_level_imports(tmp_path, monkeypatch):
    """A scratch module with a registry string, function-level imports, a relative ``import_module``
    and a dotted name in a string: each is an edge, with where it is; a file name is not; an import of
    a module that does not exist is reported as missing."""
    src = ("import importlib\n"
           "HOOK = 'talkhead.fomm.layout:layout_for_config_file'\n"
           "class C:\n"
           "    def m(self):\n"
           "        from .pipeline import Pipeline\n"
           "        from .face import load_image\n"
           "        print('talkhead.toml', 'talkhead.fomm.FOMM')\n"
           "        return importlib.import_module('.batch', __package__)\n")
    path = tmp_path / "scratch.py"
    path.write_text(src)
    visitor = _ImportVisitor("talkhead.scratch", path)
    monkeypatch.setattr(visitor, "path", PACKAGE_DIR / "scratch.py")
    visitor.visit(ast.parse(src))
    assert visitor.edges == {
        "talkhead.fomm.layout": "talkhead/scratch.py:2 (string at module level)",
        "talkhead.pipeline": "talkhead/scratch.py:5 (import in C.m)",
        "talkhead.fomm": "talkhead/scratch.py:7 (string in C.m)",
        "talkhead.batch": "talkhead/scratch.py:8 (import_module in C.m)",
    }
    assert visitor.missing == {"talkhead.face": "talkhead/scratch.py:6 (import in C.m)"}


# --- the rules ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(m for m in MODULES if m != "talkhead.__main__"))
def test_every_module_imports(name):
    assert importlib.import_module(name).__name__ == name


def test_every_import_names_a_module():
    """Also inside functions, where a stale import (of a module since split or renamed) would
    otherwise fail only when the function runs."""
    missing = [f"  {mod}: {where}" for v in _visit_all().values() for mod, where in v.missing.items()]
    assert not missing, "imports of talkhead modules that do not exist:\n" + "\n".join(missing)


def test_every_module_has_a_layer():
    missing = sorted(m for m in MODULES if layer_of(m) is None)
    assert not missing, f"modules with no layer (add them to LAYERS in {__name__} and README.md): {missing}"


def test_no_import_cycle_in_talkhead():
    """No cycle at all, function-level imports included (two modules of one package count too)."""
    edges = import_edges()
    cycle = find_cycle({a: set(deps) for a, deps in edges.items()})
    if cycle:
        pytest.fail("import cycle: " + " -> ".join(cycle) + "\n" + "\n".join(
            f"  {a} -> {b}: {edges[a][b]}" for a, b in zip(cycle, cycle[1:])), pytrace=False)


def test_no_module_imports_a_higher_layer():
    up = {edge: where for edge, where in upward_edges(import_edges()).items() if edge not in ALLOWED_UPWARD}
    if up:
        pytest.fail("imports into a higher layer (a module imports only its own layer or below, also inside "
                    "functions; move the definition down to its owner, or list the edge in ALLOWED_UPWARD "
                    "with its reason):\n" + "\n".join(
                        f"  {a} (layer {layer_of(a)}) -> {b} (layer {layer_of(b)}): {where}"
                        for (a, b), where in sorted(up.items())), pytrace=False)


def test_allowed_upward_edges_are_real_and_upward():
    """Each allow-list entry still exists and still points upward, and says why."""
    up = upward_edges(import_edges())
    stale = {edge for edge in ALLOWED_UPWARD if edge not in up}
    assert not stale, f"ALLOWED_UPWARD entries that are no longer upward edges (remove them): {sorted(stale)}"
    assert all(reason.strip() for reason in ALLOWED_UPWARD.values())


def test_layer_one_imports_nothing_of_ours():
    edges = import_edges()
    for name in MODULES:
        if layer_of(name) == 1:
            assert not edges[name], (name, edges[name])


def test_readme_lists_the_same_layers():
    """README.md's "Layers" section lists, per layer, exactly the modules of :data:`LAYERS`."""
    text = README.read_text(encoding="utf-8")
    section = text.split("\n## Layers", 1)[1].split("\n## ", 1)[0]
    listed = {}
    for line in section.splitlines():
        if m := re.match(r"^(\d)\. (.+?) — ", line):
            listed[int(m.group(1))] = sorted(n.strip().strip("`") for n in m.group(2).split(","))
    assert listed == {layer: sorted(names.split()) for layer, names in LAYERS.items()}
