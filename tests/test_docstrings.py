"""Every test says in its docstring what behaviour it checks."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def undocumented(path: Path, root: Path = TESTS) -> list[str]:
    """``file:line name`` of each test function in ``path`` without a docstring."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [
        f"{path.relative_to(root)}:{node.lineno} {node.name}"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.name.startswith("test_")
        and not ast.get_docstring(node)
    ]


def test_every_test_function_has_a_docstring() -> None:
    """No test function under tests/ lacks a docstring."""
    files = [p for p in TESTS.rglob("test_*.py") if "node_modules" not in p.parts]
    assert len(files) > 50  # the walk finds the suite
    missing = [entry for path in sorted(files) for entry in undocumented(path)]
    assert not missing, "test functions without a docstring:\n" + "\n".join(missing)


def test_the_check_sees_a_missing_docstring(tmp_path: Path) -> None:
    """The walk reports a test function without a docstring and passes one that has it."""
    sample = tmp_path / "test_sample.py"
    sample.write_text(
        'def test_bare() -> None:\n    assert True\n\n\ndef test_told() -> None:\n    """Told."""\n'
    )
    assert undocumented(sample, tmp_path) == ["test_sample.py:1 test_bare"]
