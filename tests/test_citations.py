"""Where the code follows the DICOM standard it says where, as a link a reader can click:
every "PS3.N section" in a docstring or comment is followed by its URL in the standard's
HTML edition (dicom.nema.org, part NN, #sect_..., #table_..., #chapter_...)."""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "screener"
#: A citation, and whether a link follows it.
CITATION = re.compile(
    r"PS ?3\.(?P<part>\d{1,2})(?: (?:Table [A-Z]{0,2}\.?[0-9][0-9.]*-[0-9a-z]+|TID \d{3,5}"
    r"|(?:Annex )?(?:[A-Z]{1,2}\.)?\d+(?:\.\d+)*|(?:Annex )?[A-Z]{1,2}(?![\w.])))?"
    r"(?P<link> <https://dicom\.nema\.org/medical/dicom/current/output/html/part(?P<linked>\d\d)"
    r"\.html[^>]*>)?"
)


def prose(source: str) -> list[tuple[int, str]]:
    """(line, text) of every docstring line and every comment in ``source``."""
    lines = source.splitlines()
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            first = node.body[0] if node.body else None
            if (
                isinstance(first, ast.Expr)
                and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)
                and first.end_lineno is not None
            ):
                found += [(i, lines[i - 1]) for i in range(first.lineno, first.end_lineno + 1)]
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            found.append((tok.start[0], tok.string))
    return found


def unlinked(source: str) -> list[str]:
    """Citations in prose with no link, or a link to another part."""
    wrong = []
    for line, text in prose(source):
        for m in CITATION.finditer(text):
            if not m["link"] or int(m["linked"]) != int(m["part"]):
                wrong.append(f"{line}: {m.group(0)}")
    return wrong


def test_every_citation_of_the_standard_links_to_its_section() -> None:
    """No docstring or comment in the package cites the standard without its link."""
    wrong = {
        str(path.relative_to(PACKAGE)): found
        for path in sorted(PACKAGE.rglob("*.py"))
        if (found := unlinked(path.read_text()))
    }
    assert wrong == {}


def test_the_check_sees_a_bare_citation() -> None:
    """A bare citation, or a link to the wrong part, is reported; a linked one is not."""
    url = "https://dicom.nema.org/medical/dicom/current/output/html/part04.html#sect_B.2.3"
    assert unlinked('"""Statuses (PS3.4 B.2.3)."""\n') == ["1: PS3.4 B.2.3"]
    assert unlinked(f"x = 1  # PS3.4 B.2.3 <{url}>\n") == []
    assert unlinked(f"x = 1  # PS3.5 6.2 <{url}>\n") != []
