"""The durable queue: the ``jobs`` table, taken in batches under a lease.

A worker takes up to N queued jobs at once and holds them under a lease (an owner and an
expiry). On PostgreSQL the batch is selected ``FOR UPDATE SKIP LOCKED``, so several worker
processes on several hosts share one queue without taking the same job; on SQLite the whole
dequeue is one ``BEGIN IMMEDIATE`` transaction (a single writer at a time).

A lease that expires (its worker died) returns the job to the queue; every dequeue counts an
attempt, and a job whose lease expired after its last allowed attempt becomes ``failed``
with that reason.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, selectinload

from screener.db import AuditEvent, Database, Instance, Job, JobState, utcnow
from screener.db.engine import as_utc

log = structlog.get_logger(__name__)


def worker_id() -> str:
    """A lease owner name unique to this process: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class LeasedJob:
    """What a worker needs of one job; detached from any session."""

    job_id: int
    instance_id: int
    sop_instance_uid: str
    study_instance_uid: str | None
    spool_path: str
    attempts: int
    queued_at: datetime
    started_at: datetime


def reclaim_expired(db: Database, max_attempts: int) -> tuple[int, int]:
    """Return jobs whose lease expired to the queue, or fail them after ``max_attempts``.

    Returns (requeued, failed).
    """
    now = utcnow()
    requeued = failed = 0
    with db.transaction() as session:
        expired = session.scalars(
            select(Job)
            .where(Job.state == JobState.PROCESSING, Job.lease_expires_at < now)
            .with_for_update(skip_locked=True)
        ).all()
        for job in expired:
            previous_owner = job.lease_owner
            job.lease_owner = None
            job.lease_expires_at = None
            job.updated_at = now
            if job.attempts >= max_attempts:
                job.state = JobState.FAILED
                job.reason = "lease_expired"
                job.last_error = (
                    f"the worker holding this job stopped before finishing it "
                    f"{job.attempts} time(s); queue.max_attempts is {max_attempts}"
                )
                job.finished_at = now
                failed += 1
            else:
                job.state = JobState.QUEUED
                requeued += 1
            session.add(
                AuditEvent(
                    at=now,
                    event="lease_expired",
                    reason="failed" if job.state == JobState.FAILED else "requeued",
                    message=f"previous owner {previous_owner}",
                    job_id=job.id,
                )
            )
    if requeued or failed:
        log.warning("leases_expired", requeued=requeued, failed=failed)
    return requeued, failed


def dequeue(
    db: Database, owner: str, limit: int, lease_seconds: float, max_attempts: int
) -> list[LeasedJob]:
    """Take up to ``limit`` queued jobs (highest priority, then oldest) under a lease."""
    reclaim_expired(db, max_attempts)
    now = utcnow()
    expires = now + timedelta(seconds=lease_seconds)
    with db.transaction() as session:
        jobs = session.scalars(
            select(Job)
            .where(Job.state == JobState.QUEUED)
            .order_by(Job.priority.desc(), Job.id)
            .limit(limit)
            .with_for_update(skip_locked=True)
            # instances and studies in two more queries, not two per job (and not locked)
            .options(selectinload(Job.instance).selectinload(Instance.study))
        ).all()
        leased: list[LeasedJob] = []
        for job in jobs:
            job.state = JobState.PROCESSING
            job.attempts += 1
            job.lease_owner = owner
            job.lease_expires_at = expires
            job.started_at = now
            job.updated_at = now
            instance = job.instance
            if instance is None:  # a queued job always has an instance; be explicit if not
                job.state = JobState.FAILED
                job.reason = "no_instance"
                job.last_error = "queued job has no instance"
                job.finished_at = now
                continue
            leased.append(
                LeasedJob(
                    job_id=job.id,
                    instance_id=instance.id,
                    sop_instance_uid=instance.sop_instance_uid,
                    study_instance_uid=instance.study.study_instance_uid
                    if instance.study
                    else None,
                    spool_path=instance.spool_path,
                    attempts=job.attempts,
                    queued_at=as_utc(job.created_at),
                    started_at=now,
                )
            )
    return leased


def _owned(session_job: Job | None, owner: str) -> bool:
    return (
        session_job is not None
        and session_job.state == JobState.PROCESSING
        and session_job.lease_owner == owner
    )


def complete(
    db: Database, job_id: int, owner: str, record: Callable[[Session], None] | None = None
) -> bool:
    """Mark a leased job done, running ``record`` (e.g. store results) in the same transaction.

    False, and nothing recorded, if the lease was lost (expired and taken elsewhere).
    """
    return complete_many(db, [(job_id, record)], owner) == 1


def complete_many(
    db: Database, items: list[tuple[int, Callable[[Session], None] | None]], owner: str
) -> int:
    """Mark a batch's leased jobs done and record their results in one transaction.

    One commit per batch rather than per job (each commit is a disk flush). A job whose lease
    was lost is left alone. Returns how many were completed.
    """
    completed = 0
    with db.transaction() as session:
        now = utcnow()
        ids = [job_id for job_id, _ in items]
        locked = {
            job.id: job
            for job in session.scalars(select(Job).where(Job.id.in_(ids)).with_for_update())
        }
        for job_id, record in items:
            job = locked.get(job_id)
            if not _owned(job, owner):
                log.warning("lease_lost", job_id=job_id)
                continue
            assert job is not None
            job.state = JobState.DONE
            job.lease_owner = None
            job.lease_expires_at = None
            job.finished_at = now
            job.updated_at = now
            job.reason = None
            job.last_error = None
            if record is not None:
                record(session)
            completed += 1
    return completed


def fail(
    db: Database,
    job_id: int,
    owner: str,
    reason: str,
    message: str,
    *,
    max_attempts: int,
    retryable: bool,
) -> str | None:
    """Record a failure; the job is queued again if retryable and attempts remain.

    Returns the job's new state, or None if the lease was lost.
    """
    with db.transaction() as session:
        job = session.get(Job, job_id, with_for_update=True)
        if not _owned(job, owner):
            log.warning("lease_lost", job_id=job_id)
            return None
        assert job is not None
        now = utcnow()
        job.reason = reason
        job.last_error = message[:4000]
        job.lease_owner = None
        job.lease_expires_at = None
        job.updated_at = now
        if retryable and job.attempts < max_attempts:
            job.state = JobState.QUEUED
        else:
            job.state = JobState.FAILED
            job.finished_at = now
        session.add(
            AuditEvent(
                at=now, event="job_failed", reason=reason, message=message[:2000], job_id=job.id
            )
        )
        return job.state


def requeue(db: Database, job_ids: list[int]) -> int:
    """Put failed (or done) jobs back in the queue with a fresh attempt count."""
    if not job_ids:
        return 0
    with db.transaction() as session:
        result = session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.state.in_([JobState.FAILED, JobState.DONE]))
            .values(state=JobState.QUEUED, attempts=0, updated_at=utcnow(), finished_at=None)
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


def counts_by_state(db: Database) -> dict[str, int]:
    with db.transaction() as session:
        rows = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
    counts = {state.value: 0 for state in JobState}
    counts.update({str(state): int(n) for state, n in rows})
    return counts
