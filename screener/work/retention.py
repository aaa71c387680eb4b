"""Spool retention: delete images screener no longer needs, keep every row about them.

An image is *settled* when no job of it is queued or processing and every SR planned from its
results was delivered (an SR pending or dead-lettered may still be rebuilt from it). A settled
image is deleted ``storage.retention_days`` after it settled (the latest of its receipt, its
jobs' ends and its SRs' deliveries), or earlier, oldest first, while the spool holds more than
``storage.max_spool_mb``. The file goes first, then ``instances.purged_at`` is set: a crash
in between leaves a row the next run completes, never a file no run would see. Results,
reviews, exports and the audit trail stay; the heatmap overlay kept for a Secondary Capture
goes with the image. The spool is read, and purged, :data:`PURGE_BATCH` images per short
transaction: on SQLite every transaction holds the write lock, which the listener's C-STORE
waits for.

Audit retention (:func:`prune_audit`, run with the spool's): ``audit_events`` rows older than
``storage.audit_retention_days`` are deleted in batches of :data:`AUDIT_BATCH`, each batch
counted per UTC day, event and reason into ``audit_counts`` in the same transaction, so totals
stay whole and a crash never counts a row twice; :data:`AUDIT_KEPT_EVENTS` stay. Anyone who
can connect adds rows (each refused association or C-STORE writes one): without this the table
only grows.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import structlog
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from screener.config import Settings
from screener.db import AuditEvent, Database, Export, Instance, Job, JobState, Result, utcnow
from screener.db.engine import as_utc
from screener.db.models import AuditCount
from screener.report.ledger import DELIVERED

log = structlog.get_logger(__name__)

BUSY = (JobState.QUEUED, JobState.PROCESSING)
#: Audit rows deleted (and counted) per transaction.
AUDIT_BATCH = 500
#: Spool images read, or marked purged, per transaction.
PURGE_BATCH = 500
#: After each batch retention rests :data:`REST_FACTOR` times as long as the batch took, and
#: at least :data:`BATCH_PAUSE` seconds: a writer waiting on SQLite's lock (the listener's
#: C-STORE) gets it before the next batch, and the purge's file deletions and commits take
#: a tenth of the time, so that ingest's own fsyncs and CPU hardly wait on them (50,000
#: images: 18 s on an idle 2-core host; some 8 minutes at load 6-8, from 101 s at 1x).
#: Resting as long as the batch took still moved ingest's p95 by 1.5-1.9x on an idle host
#: (bench_purge.py).
BATCH_PAUSE = 0.01
REST_FACTOR = 9.0


def _rest(since: float) -> None:
    """Rest after a batch begun at ``since`` (``time.monotonic()``): see :data:`REST_FACTOR`."""
    time.sleep(max(BATCH_PAUSE, REST_FACTOR * (time.monotonic() - since)))


#: Audit events never pruned: rows the code reads one by one as state. ``job_requeued``: the
#: nightly rescan caps its retries of a failed job by counting them (screener.rescan.backlog);
#: at most a few per failed job, and no caller can add them.
AUDIT_KEPT_EVENTS = ("job_requeued",)


@dataclass(frozen=True)
class Candidate:
    instance_id: int
    spool_path: str
    size_bytes: int
    settled_at: datetime
    result_ids: tuple[int, ...]


@dataclass
class PurgeSummary:
    """What a run removed (or, dry, would remove)."""

    dry_run: bool
    instances: int = 0
    bytes: int = 0
    by_age: int = 0
    by_size: int = 0
    spool_bytes_before: int = 0
    kept_busy: int = 0  # images retention may not touch yet (queued, processing, SR undelivered)
    oldest_settled: datetime | None = None
    purged_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "instances": self.instances,
            "bytes": self.bytes,
            "by_age": self.by_age,
            "by_size": self.by_size,
            "spool_bytes_before": self.spool_bytes_before,
            "kept_busy": self.kept_busy,
            "oldest_settled": self.oldest_settled.isoformat() if self.oldest_settled else None,
        }


def settled_images(db: Database, *, page: int | None = None) -> tuple[list[Candidate], int, int]:
    """Settled, unpurged images oldest first; the spool's total bytes; the unsettled count.

    Read in pages of ``page`` unpurged images by id (default :data:`PURGE_BATCH`), each page and
    the facts about its images (busy jobs, undelivered SRs, last job, last delivery, results)
    one short transaction: on SQLite every transaction takes the write lock (``BEGIN
    IMMEDIATE``), so one read of the whole spool would stall ingest for as long as it lasts.
    """
    size = page or PURGE_BATCH
    candidates: list[Candidate] = []
    total = unsettled = 0
    after = 0
    while True:
        began = time.monotonic()
        with db.transaction() as session:
            rows = session.execute(
                select(Instance.id, Instance.spool_path, Instance.size_bytes, Instance.updated_at)
                .where(Instance.purged_at.is_(None), Instance.id > after)
                .order_by(Instance.id)
                .limit(size)
            ).all()
            if not rows:
                break
            ids = [r[0] for r in rows]
            busy = set(
                session.scalars(
                    select(Job.instance_id).where(Job.instance_id.in_(ids), Job.state.in_(BUSY))
                )
            ) | set(
                session.scalars(
                    select(Result.instance_id)
                    .join(Export, Export.result_id == Result.id)
                    .where(Result.instance_id.in_(ids), Export.state != DELIVERED)
                )
            )
            last_job = dict(
                session.execute(
                    select(Job.instance_id, func.max(Job.finished_at))
                    .where(Job.instance_id.in_(ids))
                    .group_by(Job.instance_id)
                ).all()
            )
            last_export = dict(
                session.execute(
                    select(Result.instance_id, func.max(Export.delivered_at))
                    .join(Export, Export.result_id == Result.id)
                    .where(Result.instance_id.in_(ids))
                    .group_by(Result.instance_id)
                ).all()
            )
            results: dict[int, list[int]] = {}
            for instance_id, result_id in session.execute(
                select(Result.instance_id, Result.id).where(Result.instance_id.in_(ids))
            ):
                results.setdefault(instance_id, []).append(result_id)
        after = ids[-1]
        for instance_id, path, nbytes, updated in rows:
            total += int(nbytes)
            if instance_id in busy:
                unsettled += 1
                continue
            times = [as_utc(updated)] + [
                as_utc(t) for t in (last_job.get(instance_id), last_export.get(instance_id)) if t
            ]
            candidates.append(
                Candidate(
                    instance_id, path, int(nbytes), max(times), tuple(results.get(instance_id, ()))
                )
            )
        if len(rows) < size:
            break
        _rest(began)
    candidates.sort(key=lambda c: c.settled_at)
    return candidates, total, unsettled


def purge(
    db: Database,
    settings: Settings,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = PURGE_BATCH,
) -> PurgeSummary:
    """Apply ``storage.retention_days`` and ``storage.max_spool_mb`` once.

    The chosen images go ``batch`` at a time: their files are deleted (no transaction open),
    then their rows marked purged in one short transaction, with a rest between batches
    (:data:`REST_FACTOR`) so that a C-STORE waiting for the write lock gets it.
    """
    from screener.work.scoring import heatmap_path

    now = now or utcnow()
    storage = settings.storage
    candidates, total, unsettled = settled_images(db, page=batch)
    summary = PurgeSummary(dry_run=dry_run, spool_bytes_before=total, kept_busy=unsettled)
    cutoff = now - timedelta(days=storage.retention_days) if storage.retention_days > 0 else None
    cap = storage.max_spool_mb * 1024 * 1024
    remaining = total
    chosen: list[Candidate] = []
    for c in candidates:  # oldest settled first
        old = cutoff is not None and c.settled_at <= cutoff
        over = cap > 0 and remaining > cap
        if not (old or over):
            break
        chosen.append(c)
        remaining -= c.size_bytes
        summary.by_age += old
        summary.by_size += not old
    summary.instances = len(chosen)
    summary.bytes = sum(c.size_bytes for c in chosen)
    summary.oldest_settled = chosen[0].settled_at if chosen else None
    if dry_run or not chosen:
        return summary
    began = time.monotonic()
    for start in range(0, len(chosen), batch):
        if start:
            _rest(began)
            began = time.monotonic()
        done: list[int] = []
        for c in chosen[start : start + batch]:
            try:
                Path(c.spool_path).unlink(missing_ok=True)
                for result_id in c.result_ids:
                    heatmap_path(settings, result_id).unlink(missing_ok=True)
            except OSError as exc:  # e.g. permissions: leave it for the next run, say why
                log.error("purge_failed", instance_id=c.instance_id, error=str(exc))
                continue
            done.append(c.instance_id)
        if not done:
            continue
        with db.transaction() as session:
            session.execute(
                update(Instance)
                .where(Instance.id.in_(done), Instance.purged_at.is_(None))
                .values(purged_at=now)
            )
        summary.purged_ids.extend(done)
    with db.transaction() as session:
        session.add(
            AuditEvent(
                at=now,
                event="spool_purged",
                reason="retention",
                message=(
                    f"{len(summary.purged_ids)} images, {summary.bytes} bytes "
                    f"({summary.by_age} by age, {summary.by_size} by size)"
                ),
            )
        )
    log.info("spool_purged", **summary.as_dict())
    return summary


@dataclass
class AuditPruneSummary:
    """What an audit retention run deleted (or, dry, would delete); their counts are kept."""

    dry_run: bool
    events: int = 0
    batches: int = 0
    cutoff: datetime | None = None  # None: storage.audit_retention_days = 0, nothing goes

    def as_dict(self) -> dict[str, object]:
        return {
            "dry_run": self.dry_run,
            "events": self.events,
            "batches": self.batches,
            "cutoff": self.cutoff.isoformat() if self.cutoff else None,
        }


def prune_audit(
    db: Database,
    settings: Settings,
    *,
    dry_run: bool = False,
    now: datetime | None = None,
    batch: int = AUDIT_BATCH,
) -> AuditPruneSummary:
    """Apply ``storage.audit_retention_days`` once: delete older audit rows, keep their counts."""
    days = settings.storage.audit_retention_days
    summary = AuditPruneSummary(dry_run=dry_run)
    if days <= 0:
        return summary
    cutoff = (now or utcnow()) - timedelta(days=days)
    summary.cutoff = cutoff
    if dry_run:
        with db.transaction() as session:
            summary.events = int(
                session.scalar(
                    select(func.count()).select_from(AuditEvent).where(*_prunable(cutoff))
                )
                or 0
            )
        return summary
    while True:
        began = time.monotonic()
        with db.transaction() as session:
            oldest = (
                select(AuditEvent.id, AuditEvent.at, AuditEvent.event, AuditEvent.reason)
                .where(*_prunable(cutoff))
                .order_by(AuditEvent.at)
                .limit(batch)
            )
            if db.dialect == "postgresql":  # two hosts pruning at once never count a row twice
                oldest = oldest.with_for_update(skip_locked=True)
            rows = session.execute(oldest).all()
            if not rows:
                break
            counts = Counter((as_utc(r.at).date(), r.event, r.reason or "") for r in rows)
            _add_counts(session, db.dialect, counts)
            session.execute(delete(AuditEvent).where(AuditEvent.id.in_([r.id for r in rows])))
        summary.events += len(rows)
        summary.batches += 1
        if len(rows) < batch:
            break
        _rest(began)
    if summary.events:
        log.info("audit_pruned", **summary.as_dict())
    return summary


def _prunable(cutoff: datetime) -> tuple[Any, ...]:
    return AuditEvent.at < cutoff, AuditEvent.event.not_in(AUDIT_KEPT_EVENTS)


def _add_counts(session: Session, dialect: str, counts: Counter[tuple[date, str, str]]) -> None:
    """Add to ``audit_counts`` (INSERT ... ON CONFLICT DO UPDATE: SQLite and PostgreSQL)."""
    insert: Any
    if dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert
    stmt = insert(AuditCount).values(
        [
            {"day": day, "event": event, "reason": reason, "events": n}
            for (day, event, reason), n in counts.items()
        ]
    )
    session.execute(
        stmt.on_conflict_do_update(
            index_elements=["day", "event", "reason"],
            set_={"events": AuditCount.events + stmt.excluded.events},
        )
    )


def audit_totals(
    session: Session, events: list[str], kept: Mapping[str, int] | None = None
) -> dict[str, int]:
    """How many of each event ever happened: rows still kept plus rows retention counted.
    ``kept``: the rows still kept by event, when known (``screener.db.tallies``); else they
    are counted."""
    totals: dict[str, int] = {e: 0 for e in events}
    for table_rows in (
        session.execute(
            select(AuditEvent.event, func.count())
            .where(AuditEvent.event.in_(events))
            .group_by(AuditEvent.event)
        ).all()
        if kept is None
        else [(e, n) for e, n in kept.items() if e in totals],
        session.execute(
            select(AuditCount.event, func.sum(AuditCount.events))
            .where(AuditCount.event.in_(events))
            .group_by(AuditCount.event)
        ).all(),
    ):
        for event, n in table_rows:
            totals[event] += int(n or 0)
    return totals


class RetentionTimer:
    """Runs :func:`purge` and :func:`prune_audit` every ``storage.purge_interval_minutes`` in
    ``screener serve``."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="retention", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        interval = self.settings.storage.purge_interval_minutes * 60.0
        if self._stop.wait(min(interval, 5.0)):  # the first run once the daemon is up
            return
        while not self._stop.is_set():
            try:
                purge(self.db, self.settings)
            except Exception:  # stage boundary: retention must never take the daemon down
                log.exception("purge_error")
            try:
                prune_audit(self.db, self.settings)
            except Exception:  # stage boundary, as above
                log.exception("audit_prune_error")
            if self._stop.wait(interval):
                break

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
