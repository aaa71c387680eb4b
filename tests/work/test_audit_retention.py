"""Audit retention on SQLite and PostgreSQL: audit_events rows older than
``storage.audit_retention_days`` go in batches, their counts per day, event and reason stay in
audit_counts, and the totals ``screener status`` reports are the same before and after."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from support import run_screener

from screener.config import load_settings
from screener.db import AuditEvent, Database
from screener.db.migrate import upgrade
from screener.db.models import AuditCount
from screener.views.status import build_report
from screener.work.retention import prune_audit

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _add(db: Database, days_ago: float, event: str, reason: str | None, n: int = 1) -> None:
    with db.transaction() as session:
        for _ in range(n):
            session.add(
                AuditEvent(
                    at=NOW - timedelta(days=days_ago),
                    event=event,
                    reason=reason,
                    calling_ae_title="INTRUDER",
                    message="refused",
                )
            )


def _counts(db: Database) -> dict[tuple[str, str, str], int]:
    with db.transaction() as session:
        rows = session.execute(
            select(AuditCount.day, AuditCount.event, AuditCount.reason, AuditCount.events)
        ).all()
    return {(str(day), event, reason): int(n) for day, event, reason, n in rows}


def _kept(db: Database) -> int:
    with db.transaction() as session:
        return int(session.scalar(select(func.count()).select_from(AuditEvent)) or 0)


def _fill(db: Database) -> None:
    _add(db, 100, "store_refused", "sop_class_not_supported", 5)  # 2026-08-28
    _add(db, 95, "association_rejected", "calling_ae_not_allowed", 3)  # 2026-09-02
    _add(db, 200, "process_restarted", "worker-1", 2)  # 2026-05-20
    _add(db, 120, "duplicate_ignored", None)  # 2026-08-08, no reason
    _add(db, 150, "job_requeued", "rescan_retry", 2)  # the rescan's retry cap reads these: kept
    _add(db, 1, "store_refused", "sop_class_not_supported")  # recent: kept
    _add(db, 1, "association_rejected", "calling_ae_not_allowed")


def test_old_audit_rows_go_in_batches_and_status_totals_stay(db_url: str) -> None:
    """With the default 90 days, 11 old rows go in batches of 3, the 2 recent ones and the
    rescan's retry marks stay, the counts per day/event/reason are kept, and status's totals
    are unchanged."""
    db = Database(db_url)
    upgrade(db)
    try:
        _fill(db)
        before = build_report(db, limit=0)
        assert before.received["stores_refused"] == 6
        assert before.received["associations_refused"] == 4
        assert before.restarts["total"] == 2

        settings = load_settings(None, environ={})
        assert settings.storage.audit_retention_days == 90
        summary = prune_audit(db, settings, now=NOW, batch=3)
        assert (summary.events, summary.batches) == (11, 4)
        assert _kept(db) == 4  # 2 recent, 2 job_requeued
        assert _counts(db) == {
            ("2026-08-28", "store_refused", "sop_class_not_supported"): 5,
            ("2026-09-02", "association_rejected", "calling_ae_not_allowed"): 3,
            ("2026-05-20", "process_restarted", "worker-1"): 2,
            ("2026-08-08", "duplicate_ignored", ""): 1,
        }
        after = build_report(db, limit=0)
        assert after.received == before.received
        assert after.restarts["total"] == 2

        # more refusals on a day already counted: added to its row (ON CONFLICT DO UPDATE)
        _add(db, 100, "store_refused", "sop_class_not_supported", 4)
        assert prune_audit(db, settings, now=NOW).events == 4
        assert _counts(db)[("2026-08-28", "store_refused", "sop_class_not_supported")] == 9
        assert build_report(db, limit=0).received["stores_refused"] == 10
        assert prune_audit(db, settings, now=NOW).events == 0  # nothing left to prune
    finally:
        db.dispose()


def test_zero_keeps_every_row_and_a_dry_run_deletes_nothing(db_url: str) -> None:
    """audit_retention_days = 0 keeps the audit trail for ever; a dry run counts what would go
    and leaves every row and no count."""
    db = Database(db_url)
    upgrade(db)
    try:
        _fill(db)
        forever = load_settings(None, environ={"SCREENER_STORAGE_AUDIT_RETENTION_DAYS": "0"})
        summary = prune_audit(db, forever, now=NOW)
        assert (summary.events, summary.cutoff) == (0, None)
        assert _kept(db) == 15

        settings = load_settings(None, environ={})
        dry = prune_audit(db, settings, now=NOW, dry_run=True)
        assert dry.events == 11 and dry.cutoff == NOW - timedelta(days=90)
        assert _kept(db) == 15 and _counts(db) == {}
    finally:
        db.dispose()


def test_purge_command_prunes_the_audit_trail(tmp_path: Path) -> None:
    """`screener purge --json` reports the audit rows it deleted; `screener status --json`
    still counts them."""
    url = f"sqlite:///{tmp_path / 's.db'}"
    db = Database(url)
    upgrade(db)
    try:
        for days_ago in (400, 30):  # relative to the real clock: the command uses it
            with db.transaction() as session:
                session.add(
                    AuditEvent(
                        at=datetime.now(UTC) - timedelta(days=days_ago),
                        event="store_refused",
                        reason="sop_class_not_supported",
                    )
                )
    finally:
        db.dispose()
    env = {"SCREENER_DATABASE_URL": url, "SCREENER_STORAGE_SPOOL_DIR": str(tmp_path / "spool")}
    done = run_screener(env, tmp_path, "purge", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["audit"] | {"cutoff": None} == {
        "dry_run": False,
        "events": 1,
        "batches": 1,
        "cutoff": None,
    }
    status = run_screener(env, tmp_path, "status", "--json")
    assert json.loads(status.stdout)["received"]["stores_refused"] == 2
    text = run_screener(env, tmp_path, "purge")
    assert "deleted 0 audit rows older than 90 days" in text.stdout, text.stdout
