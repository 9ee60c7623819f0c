"""The package's modules import each other without a circle and only down the layers of
``docs/architecture.md``; experiments import only public names.

The import graph is read from the source (``ast``), not from ``sys.modules``: an edge A -> B for
every ``import B`` / ``from B import name`` in module A (``from P import m`` with ``m`` a
submodule of package ``P`` is an edge to ``P.m``), at module level or inside a function (a
deferred import is still a dependency), except under ``if TYPE_CHECKING:``, which never runs.
A package's ``__init__`` is the node of the package's name.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = "svd_callback"
REPO = Path(__file__).resolve().parents[1]
ROOT = REPO / PACKAGE
ARCHITECTURE = REPO / "docs" / "architecture.md"


def module_names(root: Path = ROOT, package: str = PACKAGE) -> dict[str, Path]:
    """Qualified module name -> source file, for every ``.py`` file of the package."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join([package, *parts])] = path
    return names


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST):
    """Import nodes of a module, leaving out the bodies of ``if TYPE_CHECKING:``."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def import_graph(names: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the package modules it imports."""
    graph: dict[str, set[str]] = {name: set() for name in names}
    for name, path in names.items():
        is_package = path.name == "__init__.py"
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1 packages
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base
                           for alias in node.names]
            for target in targets:
                while target and target not in names:  # import a.b.c of a module a.b
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_package_has_no_import_circle():
    graph = import_graph(module_names())
    assert len(graph) > 40 and graph[f"{PACKAGE}.analysis"]  # the graph was read
    assert cycles(graph) == [], "import circles: " + "; ".join(
        " -> ".join(c) for c in cycles(graph))


def test_the_cycle_finder_sees_a_circle_through_a_deferred_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text("def f():\n    from pkg import c\n")
    (package / "c.py").write_text("import pkg.a\n")
    (package / "d.py").write_text("from typing import TYPE_CHECKING\n"
                                  "if TYPE_CHECKING:\n    from pkg.c import x\n")
    graph = import_graph(module_names(package, "pkg"))
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"}
    assert graph["pkg.d"] == set()  # TYPE_CHECKING imports never run
    assert cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]


@pytest.mark.parametrize(
    ("module", "forbidden"),
    [
        ("alerts.class_rules", "classes.analysis"),  # one constant, from a small module
        ("demo", "cli"),  # the table formatter lives in svd_callback.table
    ],
)
def test_modules_do_not_import_a_big_module_for_one_name(module, forbidden):
    graph = import_graph(module_names())
    assert f"{PACKAGE}.{forbidden}" not in graph[f"{PACKAGE}.{module}"]


def test_relative_imports_resolve_from_the_package(tmp_path):
    package = tmp_path / "pkg"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("from .inner import mod\n")
    (package / "inner" / "__init__.py").write_text("from . import mod\nfrom ..top import x\n")
    (package / "inner" / "mod.py").write_text("from .. import top\n")
    (package / "top.py").write_text("")
    graph = import_graph(module_names(package, "pkg"))
    assert graph["pkg"] == {"pkg.inner.mod"}
    assert graph["pkg.inner"] == {"pkg.inner.mod", "pkg.top"}
    assert graph["pkg.inner.mod"] == {"pkg.top"}


# ---------------------------------------------------------------------- layers
_LAYER_ROW = re.compile(r"^\| (\d+) \| ([\w ]+) \| ([^|]+) \|")


def documented_layers(text: str) -> dict[str, int]:
    """Unit -> layer number from the table of ``docs/architecture.md`` (rows
    ``| n | name | `unit`, `unit` | job |``); a unit is a top-level module or package of the
    package, or the package itself."""
    layers: dict[str, int] = {}
    for line in text.splitlines():
        row = _LAYER_ROW.match(line)
        if row:
            for unit in re.findall(r"`(\w+)`", row.group(3)):
                assert unit not in layers, f"{unit} is in two layers"
                layers[unit] = int(row.group(1))
    return layers


def unit_of(module: str, package: str = PACKAGE) -> str:
    """``svd_callback.sinks.tags`` -> ``sinks``; the package itself is its own unit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else package


def upward_imports(graph: dict[str, set[str]], layers: dict[str, int],
                   package: str = PACKAGE) -> list[str]:
    """Every import of a module from a higher layer than its own, as ``a (n) -> b (m)``."""
    found = []
    for module, targets in sorted(graph.items()):
        mine = layers[unit_of(module, package)]
        for target in sorted(targets):
            theirs = layers[unit_of(target, package)]
            if theirs > mine:
                found.append(f"{module} ({mine}) -> {target} ({theirs})")
    return found


def test_every_module_has_a_documented_layer():
    layers = documented_layers(ARCHITECTURE.read_text())
    units = {unit_of(m) for m in module_names()}
    assert units - set(layers) == set(), "modules missing from docs/architecture.md's layers"
    assert set(layers) - units == set(), "docs/architecture.md names modules that do not exist"


def test_imports_point_down_the_documented_layers():
    layers = documented_layers(ARCHITECTURE.read_text())
    assert len(set(layers.values())) >= 6  # the table was read
    assert upward_imports(import_graph(module_names()), layers) == []


def test_the_layer_check_sees_an_upward_deferred_import(tmp_path):
    package = tmp_path / "pkg"
    (package / "low").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low" / "__init__.py").write_text("")
    (package / "low" / "a.py").write_text("def f():\n    from pkg.high import g\n")
    (package / "high.py").write_text("from pkg.low import a\n")
    (package / "typing_only.py").write_text("from typing import TYPE_CHECKING\n"
                                            "if TYPE_CHECKING:\n    from pkg import high\n")
    table = ("| 1 | low | `low`, `typing_only` | x |\n| 2 | high | `high`, `pkg` | y |\n")
    layers = documented_layers(table)
    assert layers == {"low": 1, "typing_only": 1, "high": 2, "pkg": 2}
    graph = import_graph(module_names(package, "pkg"))
    assert upward_imports(graph, layers, "pkg") == ["pkg.low.a (1) -> pkg.high (2)"]


# ---------------------------------------------------------------------- experiments
def experiment_imports(root: Path = REPO / "experiments") -> list[tuple[str, str, str]]:
    """(file, module, name) of every ``from svd_callback... import name`` of the experiments
    (deferred ones included); ``import svd_callback.x`` gives the name ``*``."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in _imports(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(PACKAGE):
                found += [(str(path.relative_to(REPO)), node.module, a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                found += [(str(path.relative_to(REPO)), a.name, "*") for a in node.names
                          if a.name.startswith(PACKAGE)]
    return found


def test_experiments_use_the_public_api_only():
    private = []
    for path, module, name in experiment_imports():
        timing = path.startswith("experiments/benchmarks/")  # may patch the path it times
        if not timing and (module == f"{PACKAGE}.monitor"
                           or module.startswith(f"{PACKAGE}.monitor.")):
            private.append(f"{path}: {module} (the callback's parts)")
            continue
        if name == "*" or f"{module}.{name}" in module_names():
            continue  # a module itself
        public = getattr(importlib.import_module(module), "__all__", ())
        if name not in public:
            private.append(f"{path}: {module}.{name} is not in its __all__")
    assert private == []


def test_the_experiments_have_no_import_circle():
    """No experiment imports private helpers from a ``run.py`` that imports it back."""
    graph = import_graph(module_names(REPO / "experiments", "experiments"))
    assert len(graph) > 20 and cycles(graph) == []
