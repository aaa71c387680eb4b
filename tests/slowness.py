"""Which tests start something (a process, a server, dcmtk, Orthanc, a browser, a training):
``tests/conftest.py`` marks them ``slow``, and ``./dev test --fast`` leaves them out.

Decided from the source, not from timings: a test starts something when it calls one of
:data:`STARTERS` (or a function of :data:`MODULES`), asks for a fixture that does, or calls
a helper of its module that does, through any number of helpers and fixtures.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

#: Names whose use means a test starts something: a child process (``screener serve``/``web``,
#: the CLI in a subprocess, the web's model process, worker processes), a server (an in-process
#: daemon with its DICOM listener, a health server, a pynetdicom SCP), dcmtk, Orthanc or a
#: browser. Fixtures and helpers that use one (in any module of tests/) count as one; so does
#: a ``["train", ...]`` command line (a training).
STARTERS = frozenset(
    {
        "ServeProcess", "run_screener", "Popen", "kill_mid_call", "storescu", "ModelWork",
        "WebThread", "serve_forever", "start_server", "compose", "HealthServer", "WorkerProcesses",
        "worker_process_main", "browser", "dcmqrscp", "orthanc", "storescp", "tiny_bundle",
    }
)  # fmt: skip
#: Modules whose functions start processes (``subprocess.run``, ``multiprocessing.Process``).
MODULES = frozenset({"subprocess", "multiprocessing"})
TESTS = Path(__file__).resolve().parent


def _callee(func: ast.expr) -> set[str]:
    """The name a call is made by (``compose(...)``, ``ae.start_server(...)``: its last part),
    and for a module's function (``subprocess.run(...)``) the module's name."""
    names: set[str] = set()
    if isinstance(func, ast.Name):
        names.add(func.id)
    elif isinstance(func, ast.Attribute):
        names.add(func.attr)
        root = func.value
        while isinstance(root, ast.Attribute):
            root = root.value
        if isinstance(root, ast.Name) and root.id in MODULES:
            names.add(root.id)
    return names


def _references(node: ast.AST) -> tuple[set[str], set[str]]:
    """What a definition calls (names in the called expressions, and its arguments: the
    fixtures a test asks for) and every name it mentions. A ``["train", ...]`` command line
    counts as calling ``tiny_bundle`` (a training, as that fixture's)."""
    called: set[str] = set()
    mentioned: set[str] = set()
    for n in ast.walk(node):
        if isinstance(n, ast.Name):
            mentioned.add(n.id)
        elif isinstance(n, ast.Attribute):
            mentioned.add(n.attr)
        elif isinstance(n, ast.arg):
            called.add(n.arg)
        elif isinstance(n, ast.Call):
            called.update(_callee(n.func))
        elif isinstance(n, ast.List) and n.elts:
            first = n.elts[0]
            if isinstance(first, ast.Constant) and first.value == "train":
                called.add("tiny_bundle")
    return called, mentioned | called


def _autouse(node: ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) -> bool:
    return any(
        isinstance(d, ast.Call) and any(k.arg == "autouse" for k in d.keywords)
        for d in node.decorator_list
    )


@functools.cache
def _starting(path: Path, known: frozenset[str]) -> frozenset[str]:
    """The module's top-level functions and classes that start something, directly or
    through one another or through ``known`` (the shared fixtures and helpers)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    units = {
        node.name: _references(node)
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and not _autouse(node)  # every test uses those: a clean-up, not what it starts
    }
    slow: set[str] = set()
    grew = True
    while grew:
        grew = False
        for name, (called, mentioned) in units.items():
            if name not in slow and (called & (STARTERS | MODULES) or mentioned & (known | slow)):
                slow.add(name)
                grew = True
    return frozenset(slow)


@functools.cache
def _shared_starting() -> frozenset[str]:
    """Fixtures and helpers of the non-test modules (conftest.py, support.py, ...) that start
    something."""
    helpers = sorted(p for p in TESTS.rglob("*.py") if not p.name.startswith("test_"))
    helpers = [p for p in helpers if "node_modules" not in p.parts]
    known: frozenset[str] = frozenset()
    while True:  # to a fixed point: a helper may use one defined in another module
        grown = known.union(*(_starting(p, known) for p in helpers))
        if grown == known:
            return known
        known = grown


def starts_something(item: pytest.Item) -> bool:
    """Whether the test (its function, the module helpers it calls, or a fixture it uses)
    starts a process, a server, dcmtk, Orthanc, a browser or a training."""
    function = getattr(item, "originalname", item.name)
    cls = getattr(item, "cls", None)
    shared = _shared_starting()
    local = _starting(Path(str(item.path)), shared)
    fixtures = set(getattr(item, "fixturenames", ()))
    return (
        function in local
        or (cls is not None and cls.__name__ in local)
        or bool(fixtures & (shared | local | STARTERS))
    )
