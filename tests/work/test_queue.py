"""The durable queue on SQLite and PostgreSQL: batches under a lease, expiry, attempts."""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update
from support import build_dicom

from screener.config import Settings
from screener.db import AuditEvent, Database, Job, JobState, utcnow
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.spool import Spool
from screener.work import queue


def _setup(settings: Settings, n: int) -> tuple[Database, list[int]]:
    db = Database(settings.database.url)
    upgrade(db)
    acceptor = Acceptor(db, Spool(settings.storage.spool_dir, 0), settings)
    ids = []
    for i in range(n):
        accepted = acceptor.accept(build_dicom(seed=i), source="dicom")
        assert accepted.job_id is not None
        ids.append(accepted.job_id)
    return db, ids


def test_dequeue_takes_a_batch_in_order_under_a_lease(
    db_url: str, make_settings: Callable[..., Settings]
) -> None:
    """Dequeue returns the oldest queued jobs, marks them processing with an owner and expiry."""
    db, ids = _setup(make_settings(db_url), 5)
    batch = queue.dequeue(db, "w1", limit=3, lease_seconds=60, max_attempts=3)
    assert [j.job_id for j in batch] == ids[:3]
    assert all(j.attempts == 1 for j in batch)
    with db.transaction() as s:
        job = s.get(Job, ids[0])
        assert job is not None and job.state == JobState.PROCESSING and job.lease_owner == "w1"
    assert [j.job_id for j in queue.dequeue(db, "w2", 10, 60, 3)] == ids[3:]
    assert queue.dequeue(db, "w3", 10, 60, 3) == []
    assert queue.counts_by_state(db)["processing"] == 5
    db.dispose()


def test_complete_and_fail(db_url: str, make_settings: Callable[..., Settings]) -> None:
    """complete marks done; a retryable failure requeues until attempts run out, then fails."""
    db, _ids = _setup(make_settings(db_url), 2)
    a, b = queue.dequeue(db, "w", 2, 60, 2)
    assert queue.complete(db, a.job_id, "w")
    assert (
        queue.fail(db, b.job_id, "w", "decode", "bad pixels", max_attempts=2, retryable=True)
        == "queued"
    )
    (b2,) = queue.dequeue(db, "w", 2, 60, 2)
    assert b2.attempts == 2
    assert (
        queue.fail(db, b2.job_id, "w", "decode", "bad pixels", max_attempts=2, retryable=True)
        == "failed"
    )
    counts = queue.counts_by_state(db)
    assert (counts["done"], counts["failed"], counts["queued"]) == (1, 1, 0)
    db.dispose()


def _expire_lease(db: Database, job_id: int) -> None:
    """Move the job's lease expiry into the past in the database, as if its lease had run out."""
    with db.transaction() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )


def test_expired_lease_returns_job_then_fails_after_max_attempts(
    db_url: str, make_settings: Callable[..., Settings]
) -> None:
    """A job whose lease expires is queued again; after max_attempts expiries it is failed with the reason."""
    db, (job_id,) = _setup(make_settings(db_url), 1)
    # leases of an hour: only _expire_lease ends them, so no timing decides the outcome
    (_first,) = queue.dequeue(db, "dead-worker", 1, lease_seconds=3600, max_attempts=2)
    assert queue.dequeue(db, "w2", 1, 3600, 2) == []  # still leased
    _expire_lease(db, job_id)
    (second,) = queue.dequeue(db, "w2", 1, lease_seconds=3600, max_attempts=2)
    assert second.job_id == job_id and second.attempts == 2
    assert not queue.complete(db, job_id, "dead-worker")  # the old owner lost the lease
    assert queue.dequeue(db, "w3", 1, 3600, 2) == []  # w2's lease still holds
    _expire_lease(db, job_id)
    assert queue.dequeue(db, "w3", 1, 3600, 2) == []
    with db.transaction() as s:
        job = s.get(Job, job_id)
        assert job is not None
        assert job.state == JobState.FAILED and job.reason == "lease_expired"
        assert "2 time(s)" in (job.last_error or "")
        events = s.scalars(
            select(AuditEvent.reason)
            .where(AuditEvent.job_id == job_id, AuditEvent.event == "lease_expired")
            .order_by(AuditEvent.id)
        ).all()
        assert list(events) == ["requeued", "failed"]
    db.dispose()


def test_concurrent_workers_never_share_a_job(
    db_url: str, make_settings: Callable[..., Settings]
) -> None:
    """Four threads dequeuing at once take every job exactly once (SKIP LOCKED / BEGIN IMMEDIATE)."""
    db, ids = _setup(make_settings(db_url), 40)
    taken: list[int] = []
    lock = threading.Lock()

    def work(owner: str) -> None:
        while True:
            batch = queue.dequeue(db, owner, 3, 60, 3)
            if not batch:
                return
            with lock:
                taken.extend(j.job_id for j in batch)

    threads = [threading.Thread(target=work, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == sorted(ids)
    db.dispose()


def test_requeue_resets_attempts(db_url: str, make_settings: Callable[..., Settings]) -> None:
    """requeue puts a failed job back with zero attempts."""
    db, (job_id,) = _setup(make_settings(db_url), 1)
    (j,) = queue.dequeue(db, "w", 1, 60, 1)
    queue.fail(db, j.job_id, "w", "x", "y", max_attempts=1, retryable=True)
    assert queue.requeue(db, [job_id]) == 1
    (again,) = queue.dequeue(db, "w", 1, 60, 1)
    assert again.attempts == 1
    db.dispose()


def test_a_lone_job_is_not_held_for_company(
    db_url: str, make_settings: Callable[..., Settings]
) -> None:
    """With worker.max_wait_ms at ten minutes, a lone queued job is still taken at once: the
    wait for a fuller batch ends at the first tick in which no new job arrives."""
    from dataclasses import replace

    from screener.work.worker import FILL_TICK_SECONDS, Worker

    settings = make_settings(db_url)
    settings = replace(settings, worker=replace(settings.worker, max_wait_ms=600_000))
    db, ids = _setup(settings, 1)
    worker = Worker(db, settings, processor=None)  # type: ignore[arg-type]
    done = threading.Event()
    taken: list[int] = []

    def take() -> None:
        taken.extend(j.job_id for j in worker.take_batch())
        done.set()

    thread = threading.Thread(target=take, daemon=True)
    thread.start()
    assert done.wait(60), "a lone job waited for company that was not coming"
    assert taken == ids
    assert settings.worker.max_wait_ms > FILL_TICK_SECONDS * 1000
    db.dispose()
