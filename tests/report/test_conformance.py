"""docs/conformance.md lists exactly what the listener accepts and what screener proposes."""

from __future__ import annotations

import re
from pathlib import Path

from pynetdicom import DEFAULT_TRANSFER_SYNTAXES
from support import REPO

from screener.config import load_settings
from screener.ingest.listener import Listener
from screener.ingest.sopclasses import IMAGE_STORAGE_SOP_CLASSES, VERIFICATION, transfer_syntaxes
from screener.report.dimse import EXPORT_TRANSFER_SYNTAXES
from screener.report.sr import SR_SOP_CLASSES
from screener.rescan.query import STUDY_ROOT_FIND, STUDY_ROOT_MOVE

DOC = (REPO / "docs" / "conformance.md").read_text()
UID = re.compile(r"`(1\.2\.840\.10008\.[0-9.]+)`")


def _section(start: str, end: str) -> str:
    return DOC[DOC.index(start) : DOC.index(end)]


def _table_uids(text: str) -> list[str]:
    return [m for line in text.splitlines() if line.startswith("|") for m in UID.findall(line)]


def test_the_scp_tables_are_what_the_listener_supports(tmp_path: Path) -> None:
    """The conformance statement's SCP tables list exactly the SOP classes and transfer syntaxes
    the listener accepts."""
    settings = load_settings(None, {"storage.spool_dir": str(tmp_path)}, environ={})
    listener = Listener(settings.listener, acceptor=None)  # type: ignore[arg-type]
    supported = {
        str(cx.abstract_syntax): cx.transfer_syntax for cx in listener.ae.supported_contexts
    }
    scp = _section("#### 4.2.1", "#### 4.2.2")
    screened, syntaxes = scp.split("Transfer syntaxes for those classes")
    assert set(_table_uids(screened)) == set(IMAGE_STORAGE_SOP_CLASSES)
    assert _table_uids(syntaxes) == list(transfer_syntaxes(prefer_compressed=False))
    for uid in IMAGE_STORAGE_SOP_CLASSES:
        assert supported[uid] == list(transfer_syntaxes(False))
    others = set(supported) - set(IMAGE_STORAGE_SOP_CLASSES) - {VERIFICATION}
    assert f"({len(others)} classes, PS3.4 B.5)" in scp
    assert all(len(supported[uid]) == 3 for uid in others)
    assert f"Verification (`{VERIFICATION}`)" in scp


def test_the_scu_tables_are_what_screener_proposes() -> None:
    """The conformance statement's SCU tables list exactly the SR classes, transfer syntaxes and
    query/retrieve models screener proposes."""
    scu = _section("#### 4.2.2", "### 4.3")
    sent, query = scu.split("Query/Retrieve (rescan)")
    assert set(_table_uids(sent)) == set(SR_SOP_CLASSES.values()) | {"1.2.840.10008.5.1.4.1.1.7"}
    proposed = [m for m in UID.findall(sent.split("Proposed transfer syntaxes")[1])]
    assert proposed == [str(u) for u in EXPORT_TRANSFER_SYNTAXES]
    assert _table_uids(query) == [STUDY_ROOT_FIND, STUDY_ROOT_MOVE]
    assert len(DEFAULT_TRANSFER_SYNTAXES) == 4  # the four named for the rescan
    assert f"Verification SCU (`screener echo`): `{VERIFICATION}`" in scu
