"""Transient and permanent delivery failures: a permanent one is dead-lettered at once with its
reason, a transient one is retried with backoff (PS3.4 B.2.3, PS3.7 C.4.2.1)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pydicom
import pytest
from report.test_charsets import CASES, dsrdump_patient_line, source_bytes
from sqlalchemy import select
from structlog.testing import capture_logs
from support import build_dicom

from screener.config import Settings
from screener.db import Database, Export, Instance, Result
from screener.db.engine import as_utc
from screener.report.export import Exporter, backoff, export_counts, retry_dead


def _settings(make_settings: Callable[..., Settings], db_url: str, dest: str) -> Settings:
    return make_settings(
        db_url,
        export__destinations=[dest],
        export__backoff_seconds=30,  # long enough that a retry within the test is visible
        export__backoff_max_seconds=60,
        export__timeout_seconds=5,
        export__max_attempts=5,
        listener__ae_title="SCREENER",
    )


def _exports(db: Database) -> dict[int, Export]:
    """The exports by result id."""
    with db.transaction() as session:
        return {e.result_id: e for e in session.scalars(select(Export).order_by(Export.id))}


def test_unbuildable_sources_are_dead_after_one_attempt_beside_a_delivered_film(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
) -> None:
    """An unknown character set and a 70 KB Patient's Name are dead-lettered after one attempt with the reason, while a Japanese film in the same pass is delivered."""
    charset, name, _, converts = CASES["japanese-H.3.1"]
    sources = [
        source_bytes("ISO_IR 999"),
        source_bytes("ISO_IR 100", "Doe^" + "J" * 70_000, implicit=True),
        source_bytes("ISO_IR 100", "Doe^" + "J" * 70_000),  # Explicit VR: the name is UN
        source_bytes(charset, name),
    ]
    pacs = storescp().start()
    s = screened(_settings(make_settings, db_url, pacs.destination), 4, sources=sources)
    exporter = Exporter(s.db, s.settings)
    with capture_logs() as logs:
        assert exporter.deliver_due() == 1

    unknown, long_implicit, long_un, japanese = (_exports(s.db)[i] for i in s.result_ids)
    for export in (unknown, long_implicit, long_un):
        assert (export.state, export.attempts, export.next_attempt_at) == ("dead", 1, None)
        assert (export.last_error or "").startswith("permanent: cannot build the SR: source ")
    assert "Specific Character Set 'ISO_IR 999' is not a DICOM defined term" in (
        unknown.last_error or ""
    )
    assert "PatientName" in (long_implicit.last_error or "")
    assert "PatientName has VR UN" in (long_un.last_error or "")
    assert (japanese.state, japanese.attempts) == ("delivered", 1)

    dead = [e for e in logs if e["event"] == "sr_dead_lettered"]
    assert len(dead) == 3 and all(e["permanent"] is True for e in dead)
    assert "JJJJ" not in repr(logs)  # never the name (PHI), in the log or the ledger
    assert not any("JJJJ" in (e.last_error or "") for e in (long_implicit, long_un))

    (path,) = pacs.files()
    sr = pydicom.dcmread(path)
    assert sr.SOPInstanceUID == japanese.sr_sop_instance_uid
    assert sr.SpecificCharacterSet == charset
    assert name in dsrdump_patient_line(path, charset, converts)

    assert exporter.deliver_due() == 0  # nothing left to try: no second attempt
    assert {e.attempts for e in _exports(s.db).values()} == {1}
    assert export_counts(s.db) == {"pending": 0, "delivered": 1, "dead": 3}
    assert retry_dead(s.db) == 3  # `screener exports retry` still re-queues them
    assert export_counts(s.db)["pending"] == 3


@pytest.mark.parametrize("status", [0xA700, 0xA7FF, 0x0110, 0x0213])
def test_transient_status_stays_pending_with_backoff(
    status: int,
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    pynetdicom_scp: Callable[..., tuple[int, list[str]]],
) -> None:
    """A PACS answering Out of Resources, Processing failure or Resource limitation leaves the export pending, backed off, marked transient."""
    port, received = pynetdicom_scp(status)
    s = screened(_settings(make_settings, db_url, f"PACS@127.0.0.1:{port}"), 1)
    exporter = Exporter(s.db, s.settings)
    before = datetime.now(UTC)
    with capture_logs() as logs:
        assert exporter.deliver_due() == 0

    (export,) = _exports(s.db).values()
    assert (export.state, export.attempts) == ("pending", 1)
    assert (export.last_error or "").startswith(
        f"transient: C-STORE of Comprehensive 3D SR answered 0x{status:04X}"
    )
    assert export.next_attempt_at is not None
    delay = backoff(s.settings.export, 1)
    assert as_utc(export.next_attempt_at) >= before + timedelta(seconds=delay - 1)
    (event,) = [e for e in logs if e["event"] == "sr_delivery_failed"]
    assert event["permanent"] is False
    assert exporter.deliver_due() == 0 and len(received) == 1  # backing off: not sent again


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        (0xA900, "Data Set Does Not Match SOP Class"),
        (0xA9FF, "Data Set Does Not Match SOP Class"),
        (0xC000, "Cannot Understand"),
        (0x0122, "SOP Class Not Supported"),
        (0x0124, "Not Authorised"),
    ],
)
def test_permanent_status_is_dead_at_once(
    status: int,
    meaning: str,
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    pynetdicom_scp: Callable[..., tuple[int, list[str]]],
) -> None:
    """A PACS answering Data Set does not match, Cannot understand, SOP Class not supported or Not authorized dead-letters the export after one attempt."""
    port, received = pynetdicom_scp(status)
    s = screened(_settings(make_settings, db_url, f"PACS@127.0.0.1:{port}"), 1)
    exporter = Exporter(s.db, s.settings)
    with capture_logs() as logs:
        assert exporter.deliver_due() == 0

    (export,) = _exports(s.db).values()
    assert (export.state, export.attempts, export.next_attempt_at) == ("dead", 1, None)
    error = export.last_error or ""
    assert error.startswith(f"permanent: C-STORE of Comprehensive 3D SR answered 0x{status:04X}")
    assert meaning in error
    (event,) = [e for e in logs if e["event"] == "sr_dead_lettered"]
    assert event["permanent"] is True and event["attempts"] == 1
    assert len(received) == 1


def test_valid_film_in_a_batch_with_a_permanent_failure_is_unaffected(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
    tmp_path: Path,
) -> None:
    """A film whose spool file was replaced by a non-DICOM file is dead at once; the film after it in the same association is delivered."""
    pacs = storescp().start()
    sources = [build_dicom(seed=1), build_dicom(seed=2)]
    s = screened(_settings(make_settings, db_url, pacs.destination), 2, sources=sources)
    with s.db.transaction() as session:
        result = session.get(Result, s.result_ids[0])
        assert result is not None
        instance = session.get(Instance, result.instance_id)
        assert instance is not None
        Path(instance.spool_path).write_bytes(b"not DICOM at all")
    assert Exporter(s.db, s.settings).deliver_due() == 1
    bad, good = (_exports(s.db)[i] for i in s.result_ids)
    assert (bad.state, bad.attempts) == ("dead", 1)
    assert (bad.last_error or "").startswith("permanent: cannot build the SR")
    assert good.state == "delivered" and len(pacs.files()) == 1
