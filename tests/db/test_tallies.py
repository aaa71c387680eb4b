"""The counts kept on write (``row_tallies``, migration 0016's triggers) agree with a recount
from the rows after enqueues, completions, failures, deliveries and purges, on SQLite and
PostgreSQL; the migration starts them from the rows already there; ``status`` reads them."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import delete, func, select, update
from support import build_dicom, record_result

from screener.config import Settings
from screener.db import AuditEvent, Database, Export, Job, JobState, Result, utcnow
from screener.db.migrate import upgrade
from screener.db.tallies import RowTally, fold, read_tallies, recount
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.views.status import build_report
from screener.work import queue
from screener.work.retention import prune_audit

MODEL = ("screener-densenet121", "1.0", "1.2.826.0.1.4242.9.1")


def _kept_and_recounted(db: Database) -> tuple[Counter[tuple[str, str, str]], ...]:
    with db.transaction() as session:
        return read_tallies(session), recount(session)


def _agree(db: Database) -> Counter[tuple[str, str, str]]:
    kept, counted = _kept_and_recounted(db)
    assert kept == counted
    return kept


def _accept(settings: Settings, db: Database, films: list[bytes]) -> list[str]:
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    return [acceptor.accept(data, source="dicom").sop_instance_uid for data in films]


def test_kept_counts_agree_with_a_recount_through_a_mix_of_writes(
    db_url: str, make_settings: Callable[..., Settings]
) -> None:
    """Enqueues, a duplicate, dequeues, completions with results, retried and final failures,
    SR deliveries moving state, a bulk requeue, deleted jobs and pruned audit rows: after each
    step the kept counts equal the rows counted, and status reports those figures."""
    settings = make_settings(db_url, storage__audit_retention_days=1)
    db = Database(db_url)
    try:
        upgrade(db)
        assert _agree(db) == Counter()  # a fresh database: nothing kept, nothing counted
        films = [build_dicom(seed=i) for i in range(12)]
        sops = _accept(settings, db, films)
        _accept(settings, db, films[:2])  # identical resends: duplicate_ignored audit rows
        kept = _agree(db)
        assert kept["jobs", "queued", ""] == 12 and kept["instances", "", ""] == 12
        assert kept["audit_events", "duplicate_ignored", ""] == 2

        batch = queue.dequeue(db, "w", 8, 60, 2)
        assert _agree(db)["jobs", "processing", ""] == 8
        for job in batch[:2]:
            assert queue.complete(db, job.job_id, "w")
        queue.fail(
            db, batch[2].job_id, "w", "decode_error", "bad pixels", max_attempts=2, retryable=True
        )
        queue.fail(
            db, batch[3].job_id, "w", "decode_error", "bad pixels", max_attempts=2, retryable=False
        )
        for sop, p in zip(sops[8:11], (0.9, 0.1, 0.7), strict=True):
            record_result(db, sop, p, 0.5, MODEL)
        record_result(db, sops[11], 0.2, 0.5, MODEL, label="outside_domain")
        kept = _agree(db)
        assert kept["jobs", "failed", "decode_error"] == 1
        assert (kept["results", "pneumonia", ""], kept["results", "normal", ""]) == (2, 1)

        now = utcnow()
        with db.transaction() as session:
            for result_id in session.scalars(select(Result.id)):
                session.add(Export(result_id=result_id, destination="PACS", state="pending",
                                   attempts=0, created_at=now))  # fmt: skip
        with db.transaction() as session:  # one bulk UPDATE moving rows between two keys
            first = session.scalar(select(func.min(Export.id)))
            session.execute(update(Export).where(Export.id > first).values(state="dead"))
            session.execute(update(Export).where(Export.id == first).values(state="delivered"))
        kept = _agree(db)
        assert (kept["exports", "dead", ""], kept["exports", "delivered", ""]) == (3, 1)

        with db.transaction() as session:  # back to the queue, reasons cleared; then a purge
            session.execute(
                update(Job)
                .where(Job.state == JobState.PROCESSING)
                .values(state=JobState.QUEUED, reason=None, lease_owner=None)
            )
            session.execute(delete(Job).where(Job.state == JobState.FAILED))
        with db.transaction() as session:
            session.execute(update(AuditEvent).values(at=now - timedelta(days=30)))
        assert prune_audit(db, settings, now=now).events >= 2
        kept = _agree(db)
        assert kept["jobs", "failed", "decode_error"] == 0
        assert kept["audit_events", "duplicate_ignored", ""] == 0

        report = build_report(db)
        counted = _kept_and_recounted(db)[1]
        assert report.counts["queued"] == sum(
            n for (t, s, _), n in counted.items() if t == "jobs" and s == "queued"
        )
        assert report.results == {"pneumonia": 2, "normal": 1, "outside_domain": 1}
        assert report.exports == {"pending": 0, "delivered": 1, "dead": 3}
        assert report.received["instances"] == 12
        assert report.received["duplicates_ignored"] == 2  # pruned rows still counted
    finally:
        db.dispose()


def test_the_migration_starts_the_counts_from_the_rows_there(
    db_url: str, make_settings: Callable[..., Settings]
) -> None:
    """Rows written at revision 0015 (no triggers yet) are counted by the upgrade to head."""
    settings = make_settings(db_url)
    db = Database(db_url)
    try:
        upgrade(db, "0015")
        sops = _accept(settings, db, [build_dicom(seed=i) for i in range(5)])
        record_result(db, sops[0], 0.9, 0.5, MODEL)
        queue.dequeue(db, "w", 2, 60, 2)
        upgrade(db)
        kept = _agree(db)
        assert (kept["jobs", "done", ""], kept["jobs", "queued", ""]) == (1, 2)
        assert kept["results", "pneumonia", ""] == 1
    finally:
        db.dispose()


def test_writers_beside_folds_count_once(
    db_url: str, make_settings: Callable[..., Settings]
) -> None:
    """Two threads enqueue while a third keeps reading (PostgreSQL: folding) the counts:
    nothing appended meanwhile is lost or counted twice, and a fold leaves one row per key."""
    settings = make_settings(db_url)
    db = Database(db_url)
    try:
        upgrade(db)
        acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
        writing = [True]
        errors: list[BaseException] = []

        def write(seeds: range) -> None:
            try:
                for i in seeds:
                    acceptor.accept(build_dicom(seed=i), source="dicom")
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        def read() -> None:
            try:
                while writing[0]:
                    with db.transaction() as session:
                        if session.get_bind().dialect.name == "postgresql":
                            fold(session, above=0)
                        read_tallies(session)
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=write, args=(range(k, 40, 2),)) for k in (0, 1)]
        reader = threading.Thread(target=read)
        reader.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(90)
        writing[0] = False
        reader.join(30)
        assert errors == []
        kept = _agree(db)
        assert kept["jobs", "queued", ""] == 40 and kept["instances", "", ""] == 40
        with db.transaction() as session:
            if session.get_bind().dialect.name == "postgresql":
                fold(session, above=0)
        with db.transaction() as session:
            rows = session.scalar(select(func.count()).select_from(RowTally))
        assert rows == len(_agree(db))
    finally:
        db.dispose()
