"""Delivery of SRs to a real dcmtk storescp: exactly once, retried, dead-lettered, never blocking."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from sqlalchemy import select
from structlog.testing import capture_logs
from support import exporter_refuses, free_port, wait_for

from screener.config import Settings
from screener.db import Database, Export, Instance, Result
from screener.db.engine import as_utc
from screener.report.export import Exporter, backoff, export_counts, plan_exports, retry_dead
from screener.report.sr import SR_SOP_CLASSES


def _settings(
    make_settings: Callable[..., Settings], db_url: str, *dest: str, **kw: Any
) -> Settings:
    values: dict[str, Any] = {
        "export__destinations": list(dest),
        "export__backoff_seconds": 0.1,
        "export__backoff_max_seconds": 0.4,
        "export__timeout_seconds": 5,
        "export__poll_seconds": 0.05,
        "listener__ae_title": "SCREENER",
    }
    values.update(kw)
    return make_settings(db_url, **values)


def _exports(db: Database) -> list[Export]:
    with db.transaction() as session:
        return list(session.scalars(select(Export).order_by(Export.id)))


def _received(files: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in files]


def test_sr_is_delivered_to_storescp(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
    dsrdump: Callable[[Path], str],
) -> None:
    """A planned export reaches storescp as a 3D SR that dsrdump renders; the row is delivered after 1 attempt."""
    pacs = storescp().start()
    s = screened(_settings(make_settings, db_url, pacs.destination), 1)
    with capture_logs() as logs:
        assert Exporter(s.db, s.settings).deliver_due() == 1

    (path,) = pacs.files()
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SR_SOP_CLASSES["3d"]
    text = dsrdump(path)
    assert '(233604007,SCT,"Pneumonia")' in text and '(52101004,SCT,"Present")' in text
    (export,) = _exports(s.db)
    assert (export.state, export.attempts, export.last_error) == ("delivered", 1, None)
    assert export.sr_sop_instance_uid == ds.SOPInstanceUID
    assert export.delivered_at is not None and export.next_attempt_at is None
    with s.db.transaction() as session:
        result = session.get(Result, s.result_ids[0])
        assert result is not None and result.reported_at is not None
    (event,) = [e for e in logs if e["event"] == "sr_delivered"]
    assert event["destination"] == pacs.destination and event["attempts"] == 1
    assert "Doe^Jane" not in repr(logs) and "PHI-12345" not in repr(logs)
    assert export_counts(s.db) == {"pending": 0, "delivered": 1, "dead": 0}


def test_comprehensive_sr_kind_is_sent_as_88_33(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
) -> None:
    """With export.sr_kind = comprehensive the PACS receives a Comprehensive SR (.88.33) for a negative result."""
    pacs = storescp().start()
    settings = _settings(make_settings, db_url, pacs.destination, export__sr_kind="comprehensive")
    s = screened(settings, 1, probability=0.2)
    assert Exporter(s.db, s.settings).deliver_due() == 1
    (path,) = pacs.files()
    ds = pydicom.dcmread(path)
    assert ds.SOPClassUID == SR_SOP_CLASSES["comprehensive"]
    assert "2667000" in str(ds.ContentSequence)  # Absent


def test_destination_down_then_up_delivers_everything_once(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
) -> None:
    """While nothing listens each attempt is recorded and backed off; once up, every SR arrives exactly once."""
    pacs = storescp()  # not started: the port is free, a connection is refused
    s = screened(_settings(make_settings, db_url, pacs.destination), 3)
    exporter = Exporter(s.db, s.settings)

    before = datetime.now(UTC)
    assert exporter.deliver_due() == 0
    for export in _exports(s.db):
        assert (export.state, export.attempts) == ("pending", 1)
        assert export.last_error and "association" in export.last_error
        assert export.next_attempt_at is not None and as_utc(export.next_attempt_at) > before
    assert exporter.deliver_due() == 0  # not yet due: backing off, no attempt counted
    assert {e.attempts for e in _exports(s.db)} == {1}

    pacs.start()
    delivered = 0

    def all_delivered() -> bool:
        nonlocal delivered
        delivered += exporter.deliver_due()
        return delivered == 3

    wait_for(all_delivered, timeout=20, interval=0.05)
    exports = _exports(s.db)
    assert {e.state for e in exports} == {"delivered"}
    assert {e.attempts for e in exports} == {2}
    assert exporter.deliver_due() == 0
    received = _received(pacs.files())
    assert len(received) == 3 and sorted(received) == sorted(
        str(e.sr_sop_instance_uid) for e in exports
    )


def test_one_destination_down_does_not_delay_another(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
) -> None:
    """With two destinations, the live one gets its SR in the first pass while the dead one only backs off."""
    up, down = storescp(), storescp()
    up.start()
    s = screened(_settings(make_settings, db_url, up.destination, down.destination), 2)
    started = time.monotonic()
    assert Exporter(s.db, s.settings).deliver_due() == 2
    assert time.monotonic() - started < 10
    assert len(up.files()) == 2
    by_destination: dict[str, list[Export]] = {}
    for export in _exports(s.db):
        by_destination.setdefault(export.destination, []).append(export)
    assert {e.state for e in by_destination[up.destination]} == {"delivered"}
    assert {(e.state, e.attempts) for e in by_destination[down.destination]} == {("pending", 1)}
    # each destination's SR has its own SOP Instance UID, fixed when planned
    uids = [e.sr_sop_instance_uid for e in _exports(s.db)]
    assert len(set(uids)) == 4


def test_dead_letter_after_max_attempts_and_retry(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
) -> None:
    """After max_attempts failures an export is dead; retry_dead makes it pending and it is delivered once up."""
    pacs = storescp()
    settings = _settings(make_settings, db_url, pacs.destination, export__max_attempts=2)
    s = screened(settings, 1)
    exporter = Exporter(s.db, s.settings)
    wait_for(lambda: exporter.deliver_due() == 0 and _exports(s.db)[0].state == "dead", 10)
    (export,) = _exports(s.db)
    assert (export.state, export.attempts, export.next_attempt_at) == ("dead", 2, None)
    assert (export.last_error or "").startswith("transient: association with")
    assert export_counts(s.db) == {"pending": 0, "delivered": 0, "dead": 1}
    assert exporter.deliver_due() == 0  # dead rows are not sent

    pacs.start()
    assert retry_dead(s.db) == 1
    (export,) = _exports(s.db)
    assert (export.state, export.attempts) == ("pending", 0)
    assert exporter.deliver_due() == 1
    assert _received(pacs.files()) == [export.sr_sop_instance_uid]
    assert export_counts(s.db)["delivered"] == 1


def test_retry_dead_for_one_destination_only(
    db_url: str, make_settings: Callable[..., Settings], screened: Callable[..., Any]
) -> None:
    """retry_dead with a destination revives only that destination's dead exports."""
    a, b = f"A@127.0.0.1:{free_port()}", f"B@127.0.0.1:{free_port()}"
    s = screened(_settings(make_settings, db_url, a, b, export__max_attempts=1), 1)
    Exporter(s.db, s.settings).deliver_due()
    assert export_counts(s.db)["dead"] == 2
    assert retry_dead(s.db, a) == 1
    assert {(e.destination, e.state) for e in _exports(s.db)} == {(a, "pending"), (b, "dead")}


def test_duplicate_instance_status_counts_as_delivered(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    pynetdicom_scp: Callable[..., tuple[int, list[str]]],
) -> None:
    """A PACS answering 0x0111 Duplicate SOP Instance already holds the SR: the export is delivered."""
    port, received = pynetdicom_scp(0x0111)
    s = screened(_settings(make_settings, db_url, f"PACS@127.0.0.1:{port}"), 1)
    assert Exporter(s.db, s.settings).deliver_due() == 1
    (export,) = _exports(s.db)
    assert export.state == "delivered" and received == [export.sr_sop_instance_uid]


def test_refusal_status_is_a_failed_attempt(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    pynetdicom_scp: Callable[..., tuple[int, list[str]]],
) -> None:
    """A PACS answering 0xA700 Out of Resources leaves the export pending with that status as its error."""
    port, received = pynetdicom_scp(0xA700)
    s = screened(_settings(make_settings, db_url, f"PACS@127.0.0.1:{port}"), 1)
    assert Exporter(s.db, s.settings).deliver_due() == 0
    (export,) = _exports(s.db)
    assert (export.state, export.attempts) == ("pending", 1)
    assert export.last_error is not None and export.last_error.startswith("transient: ")
    assert "0xA700" in export.last_error
    assert len(received) == 1


def test_background_exporter_delivers_and_stops(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
) -> None:
    """start() polls in a thread and delivers what becomes due; stop() ends it."""
    pacs = storescp().start()
    s = screened(_settings(make_settings, db_url, pacs.destination), 2)
    exporter = Exporter(s.db, s.settings)
    exporter.start()
    try:
        wait_for(lambda: export_counts(s.db)["delivered"] == 2, timeout=20)
    finally:
        exporter.stop()
    assert exporter._thread is None
    assert len(pacs.files()) == 2


def test_heatmap_capture_travels_with_the_sr(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
) -> None:
    """With heatmap_capture on and an overlay for the result, the PACS gets the SR and a Secondary Capture."""
    pacs = storescp().start()
    settings = _settings(make_settings, db_url, pacs.destination, export__heatmap_capture=True)
    s = screened(settings, 1)
    overlay = np.zeros((32, 32, 3), dtype=np.uint8)
    exporter = Exporter(s.db, s.settings, overlay_loader=lambda result: overlay)
    assert exporter.deliver_due() == 1
    classes = sorted(str(pydicom.dcmread(p).SOPClassUID) for p in pacs.files())
    assert classes == sorted([SR_SOP_CLASSES["3d"], "1.2.840.10008.5.1.4.1.1.7"])


def test_missing_spool_file_fails_only_its_export(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
) -> None:
    """An export whose source file is gone is dead at once with why; the other result is still delivered."""
    pacs = storescp().start()
    s = screened(_settings(make_settings, db_url, pacs.destination), 2)
    with s.db.transaction() as session:
        result = session.get(Result, s.result_ids[0])
        assert result is not None
        instance = session.get(Instance, result.instance_id)
        assert instance is not None
        Path(instance.spool_path).unlink()
    assert Exporter(s.db, s.settings).deliver_due() == 1
    (failed,) = [e for e in _exports(s.db) if e.result_id == s.result_ids[0]]
    assert (failed.state, failed.attempts, failed.next_attempt_at) == ("dead", 1, None)
    assert (failed.last_error or "").startswith("permanent: cannot build the SR")
    assert len(pacs.files()) == 1


def test_plan_exports_without_destinations_plans_nothing(
    db_url: str, make_settings: Callable[..., Settings], screened: Callable[..., Any]
) -> None:
    """With no destinations configured a result stays local: no export rows."""
    s = screened(_settings(make_settings, db_url), 1)
    assert _exports(s.db) == []
    with s.db.transaction() as session:
        result = session.get(Result, s.result_ids[0])
        assert result is not None
        assert plan_exports(session, result, s.settings) == []


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("PACS@host", "expected AE_TITLE@HOST:PORT"),
        ("host:104", "expected AE_TITLE@HOST:PORT"),
        ("PACS@host:port", "port 'port' is not a number"),
        ("PACS@host:70000", "not in 1-65535"),
        ("A_VERY_LONG_AE_TITLE@host:104", "1-16 ASCII characters"),
    ],
)
def test_bad_destination_is_a_config_error(
    entry: str, message: str, make_settings: Callable[..., Settings], sqlite_url: str
) -> None:
    """A malformed destination stops the exporter at construction with a ConfigError naming it."""
    exporter_refuses(_settings(make_settings, sqlite_url, entry), message)


@pytest.fixture
def stalled_peer() -> Iterator[str]:
    """A TCP port that completes the handshake but never answers A-ASSOCIATE (a hung PACS)."""
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield f"HUNG@127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


def test_hung_destination_does_not_hold_back_another_in_the_background(
    db_url: str,
    make_settings: Callable[..., Settings],
    storescp: Callable[..., Any],
    screened: Callable[..., Any],
    stalled_peer: str,
) -> None:
    """While one destination hangs in association set-up, the background exporter keeps delivering to the other."""
    pacs = storescp().start()
    settings = _settings(
        make_settings, db_url, pacs.destination, stalled_peer, export__timeout_seconds=4
    )
    s = screened(settings, 1)
    exporter = Exporter(s.db, s.settings)
    exporter.start()
    try:
        wait_for(lambda: len(pacs.files()) == 1, timeout=3)
        later = screened(settings, 1)  # screened while the hung association is still waiting
        wait_for(lambda: len(pacs.files()) == 2, timeout=3)
        hung = [e for e in _exports(later.db) if e.destination == stalled_peer]
        assert [e.attempts for e in hung if e.result_id == s.result_ids[0]] == [0]
    finally:
        exporter.stop()
    assert {e.state for e in _exports(s.db) if e.destination == pacs.destination} == {"delivered"}


def test_pacs_without_3d_sr_gets_a_clear_error_and_comprehensive_sr_works(
    db_url: str,
    make_settings: Callable[..., Settings],
    screened: Callable[..., Any],
    pynetdicom_scp: Callable[..., tuple[int, list[str]]],
) -> None:
    """A PACS that rejects the 3D SR context dead-letters the export with an error pointing at sr_kind; after the switch to Comprehensive SR and a retry it is delivered."""
    port, received = pynetdicom_scp(0x0000, [SR_SOP_CLASSES["comprehensive"]])
    destination = f"PACS@127.0.0.1:{port}"
    s = screened(_settings(make_settings, db_url, destination), 1)
    assert Exporter(s.db, s.settings).deliver_due() == 0
    (export,) = _exports(s.db)
    assert (export.state, export.attempts) == ("dead", 1)  # resending cannot help: permanent
    assert export.last_error == (
        "permanent: the destination does not accept Comprehensive 3D SR"
        " (try export.sr_kind = comprehensive)"
    )
    assert received == []

    comprehensive = _settings(make_settings, db_url, destination, export__sr_kind="comprehensive")
    exporter = Exporter(s.db, comprehensive)
    assert exporter.deliver_due() == 0  # dead until the operator retries
    assert retry_dead(s.db) == 1
    assert exporter.deliver_due() == 1
    assert received == [export.sr_sop_instance_uid]


def test_backoff_doubles_and_is_capped(make_settings: Callable[..., Settings]) -> None:
    """The delay after n failures is backoff_seconds * 2^(n-1), never above backoff_max_seconds."""
    export = make_settings(export__backoff_seconds=10, export__backoff_max_seconds=60).export
    assert [backoff(export, n) for n in (1, 2, 3, 4, 5)] == [10, 20, 40, 60, 60]
