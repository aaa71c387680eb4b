"""The package's folders are its architecture: each layer imports only from the layers below
it (module-level and function-level imports alike), and no two modules import each other in a
cycle. A small AST walk, no import-linter: the list below is the whole rule."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "screener"

#: Top to bottom. A unit may import from any unit in a lower layer; units sharing a layer
#: (``a | b``) are independent: neither imports the other.
LAYERS = [
    "cli",
    "commands",
    "serve",
    "web | rescan",
    "views",
    "work",
    "report",
    "site | ingest | monitor | training",
    "model",
    "imaging",
    "runtime",
    "db | dicomnet",
    "config",
    "resources",
    "errors",
]


def rank() -> dict[str, int]:
    """Each unit's layer, 0 at the top."""
    return {unit.strip(): i for i, layer in enumerate(LAYERS) for unit in layer.split("|")}


def unit_of(module: str) -> str | None:
    """``screener.work.queue`` -> ``work``; the package root itself (``__version__``) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "screener" else None


def imports(source: str, module: str) -> list[tuple[str, int]]:
    """(imported screener module, line) for every import in ``source``, relative ones resolved."""
    found = []
    package = module.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module or ""
            if name == "screener":  # from screener import queue: the submodules
                found += [(f"screener.{a.name}", node.lineno) for a in node.names]
            elif name.startswith("screener."):
                found.append((name, node.lineno))
                # from screener.work import queue: the submodule, when it is one
                found += [(f"{name}.{a.name}", node.lineno) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names if a.name.startswith("screener.")]
    return found


def upward(sources: dict[str, str]) -> list[str]:
    """Every import that points up (or sideways between independent units), as text."""
    ranks, wrong = rank(), []
    for module, source in sources.items():
        here = unit_of(module)
        for imported, line in imports(source, module):
            there = unit_of(imported)
            if here is None or there is None or there == here or there not in ranks:
                continue
            said = f"{module}:{line} imports from {there} ({here} may not use {there})"
            if ranks[there] <= ranks[here] and said not in wrong:
                wrong.append(said)
    return wrong


def cycles(sources: dict[str, str]) -> list[list[str]]:
    """Import cycles between modules (each strongly connected group of two or more)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for module, source in sources.items():
        for imported, _ in imports(source, module):
            # a package's __init__ is not a dependency on all of its modules
            if imported in sources and imported != module and imported != module.rsplit(".", 1)[0]:
                graph[module].add(imported)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(sources):
        if v not in index:
            visit(v)
    return found


def package_sources() -> dict[str, str]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        module = ".".join(rel.parts).removesuffix(".__init__")
        out[module] = path.read_text()
    return out


def test_every_unit_is_in_a_layer() -> None:
    """Each folder (and root module) of the package has its place in LAYERS."""
    units = {u for m in package_sources() if (u := unit_of(m)) is not None}
    assert units <= set(rank()), f"not in LAYERS: {sorted(units - set(rank()))}"


def test_no_import_points_up() -> None:
    """No module imports from a layer above its own, nor from an independent sibling."""
    assert upward(package_sources()) == []


def test_no_import_cycle() -> None:
    """No two modules import each other, directly or round a loop."""
    assert cycles(package_sources()) == []


@pytest.mark.parametrize(
    ("module", "source", "expected"),
    [
        (
            "screener.model.bundle",
            "from screener.views.worklist import x\n",
            "model may not use views",
        ),
        (
            "screener.work.queue",
            "def f():\n    from screener.serve import daemon\n",
            "work may not use serve",
        ),
        ("screener.site.mode", "from screener.ingest import accept\n", "site may not use ingest"),
        ("screener.work.scoring", "from ..serve.daemon import compose\n", "work may not use serve"),
    ],
)
def test_the_checker_catches_an_upward_import(module: str, source: str, expected: str) -> None:
    """An upward import (module-level, in a function, or relative) or one between independent
    siblings is reported; the layers below are fine."""
    assert any(expected in w for w in upward({module: source}))
    assert upward({module: "from screener.db import Database\nfrom screener import errors\n"}) == []


def test_the_checker_catches_a_cycle() -> None:
    """Three modules importing round a loop are one cycle."""
    sources = {
        "screener.work.a": "from screener.work import b\n",
        "screener.work.b": "from screener.work.c import x\n",
        "screener.work.c": "import screener.work.a\n",
    }
    assert cycles(sources) == [["screener.work.a", "screener.work.b", "screener.work.c"]]
