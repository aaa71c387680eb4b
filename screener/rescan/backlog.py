"""What the database says is missing or can be tried again.

Three questions, each answered from the ``studies``, ``instances``, ``jobs`` and
``results`` tables:

* **Which PACS studies are missing here?** A study is *handled* when any of its instances
  has a result, or when none of its jobs has finished without one (every job is ``queued``
  or ``processing`` — in hand — or ``skipped`` by a selection rule, which a new copy would
  only skip again). Every other study is *missing*: unknown here, known without instances,
  or with a ``done`` or ``failed`` job and no result.
* **Which failed jobs can be retried?** A ``failed`` job whose reason is not permanent
  (:data:`PERMANENT_FAILURES`: the spooled file is gone, the job has no instance, or the
  image itself cannot be turned into a model input) and that a rescan has re-queued fewer
  than :data:`MAX_RESCAN_RETRIES` times, so that a job failing for a reason not foreseen
  here is not retried every night for ever.
* **Which images were scored by another model?** An instance with results of which none
  carries the current bundle's ``uid``; the job of its latest result is re-queued.

Re-queueing follows :func:`screener.work.queue.requeue` (``failed`` or ``done`` back to
``queued`` with a fresh attempt count) and records a ``job_requeued`` audit event per job.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import structlog
from sqlalchemy import func, select, update

from screener.db import AuditEvent, Database, Instance, Job, JobState, Result, Study, utcnow

log = structlog.get_logger(__name__)

#: Failure reasons a retry cannot cure: the spooled file is gone (``spool_file_missing``),
#: there is nothing to process (``no_instance``), or the image itself is unusable
#: (:class:`screener.errors.ImageError` reasons from :mod:`screener.imaging`).
PERMANENT_FAILURES = frozenset(
    {
        "spool_file_missing",
        "no_instance",
        "no_pixel_data",
        "not_an_image",
        "unreadable_image",
        "undecodable_pixel_data",
        "unsupported_photometric_interpretation",
        "image_too_small",
        "image_too_large",
        "bad_canonical_input",
    }
)

#: A failed job is re-queued by rescans at most this many times.
MAX_RESCAN_RETRIES = 3

#: ``job_requeued`` audit reasons.
REASON_RETRY = "rescan_retry"
REASON_RESCORE = "rescan_rescore"

_IN_HAND = frozenset({JobState.QUEUED, JobState.PROCESSING, JobState.SKIPPED})
_CHUNK = 500  # bound the IN (...) lists

T = TypeVar("T")


def _chunks(items: Sequence[T]) -> Iterator[Sequence[T]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def missing_studies(db: Database, study_uids: Iterable[str]) -> list[str]:
    """Of ``study_uids``, those not handled here (see the module docstring), in order."""
    uids = list(dict.fromkeys(study_uids))
    with_result: set[str] = set()
    states: dict[str, set[str]] = defaultdict(set)
    with db.transaction() as session:
        for chunk in _chunks(uids):
            with_result.update(
                session.scalars(
                    select(Study.study_instance_uid)
                    .join(Instance, Instance.study_id == Study.id)
                    .join(Result, Result.instance_id == Instance.id)
                    .where(Study.study_instance_uid.in_(chunk))
                    .distinct()
                )
            )
            rows = session.execute(
                select(Study.study_instance_uid, Job.state)
                .join(Instance, Instance.study_id == Study.id)
                .join(Job, Job.instance_id == Instance.id)
                .where(Study.study_instance_uid.in_(chunk))
                .distinct()
            )
            for uid, state in rows:
                states[uid].add(state)
    return [
        uid
        for uid in uids
        if uid not in with_result and not (states[uid] and states[uid] <= _IN_HAND)
    ]


@dataclass(frozen=True)
class Candidate:
    """A job a rescan would re-queue, and why (no PHI: ids and UIDs)."""

    job_id: int
    sop_instance_uid: str | None
    reason: str | None


def retryable_failed_jobs(db: Database) -> list[Candidate]:
    """Failed jobs with a reason a retry may cure, not yet retried too often by rescans."""
    with db.transaction() as session:
        retried: dict[int | None, int] = {
            job_id: count
            for job_id, count in session.execute(
                select(AuditEvent.job_id, func.count())
                .where(AuditEvent.event == "job_requeued", AuditEvent.reason == REASON_RETRY)
                .group_by(AuditEvent.job_id)
            )
        }
        rows = session.execute(
            select(Job.id, Instance.sop_instance_uid, Job.reason)
            .outerjoin(Instance, Job.instance_id == Instance.id)
            .where(Job.state == JobState.FAILED)
            .order_by(Job.id)
        )
        return [
            Candidate(job_id, sop_uid, reason)
            for job_id, sop_uid, reason in rows
            if sop_uid is not None
            and reason not in PERMANENT_FAILURES
            and retried.get(job_id, 0) < MAX_RESCAN_RETRIES
        ]


def stale_scored_jobs(db: Database, current_model_uid: str) -> list[Candidate]:
    """For each instance whose results are all from another model, the job of its latest result.

    Only jobs that are ``done`` or ``failed`` are returned; one queued or processing is
    already going to be scored again.
    """
    with db.transaction() as session:
        rows = session.execute(
            select(Result.id, Result.instance_id, Result.job_id, Result.model_uid).order_by(
                Result.id
            )
        )
        current: set[int] = set()
        latest_job: dict[int, int] = {}
        for _result_id, instance_id, job_id, model_uid in rows:
            if model_uid == current_model_uid:
                current.add(instance_id)
            latest_job[instance_id] = job_id  # ordered by id: the last one wins
        job_ids = [job for instance, job in latest_job.items() if instance not in current]
        found: list[Candidate] = []
        for chunk in _chunks(sorted(set(job_ids))):
            found += [
                Candidate(job_id, sop_uid, reason)
                for job_id, sop_uid, reason in session.execute(
                    select(Job.id, Instance.sop_instance_uid, Job.reason)
                    .join(Instance, Job.instance_id == Instance.id)
                    .where(Job.id.in_(chunk), Job.state.in_([JobState.DONE, JobState.FAILED]))
                    .order_by(Job.id)
                )
            ]
        return found


def requeue_jobs(db: Database, job_ids: Sequence[int], reason: str) -> list[int]:
    """Put ``failed`` or ``done`` jobs back in the queue with a fresh attempt count.

    The semantics of :func:`screener.work.queue.requeue`, plus a ``job_requeued`` audit event
    per job naming ``reason`` and the job's previous state. Returns the ids re-queued (a job
    taken or changed meanwhile is left alone).
    """
    requeued: list[int] = []
    for chunk in _chunks(list(job_ids)):
        with db.transaction() as session:
            now = utcnow()
            previous: dict[int, str] = {
                job_id: state
                for job_id, state in session.execute(
                    select(Job.id, Job.state)
                    .where(Job.id.in_(chunk), Job.state.in_([JobState.FAILED, JobState.DONE]))
                    .with_for_update()
                )
            }
            if not previous:
                continue
            session.execute(
                update(Job)
                .where(Job.id.in_(list(previous)))
                .values(
                    state=JobState.QUEUED,
                    attempts=0,
                    lease_owner=None,
                    lease_expires_at=None,
                    finished_at=None,
                    updated_at=now,
                )
            )
            for job_id, state in previous.items():
                session.add(
                    AuditEvent(
                        at=now,
                        event="job_requeued",
                        reason=reason,
                        message=f"previous state {state}",
                        job_id=job_id,
                    )
                )
            requeued += sorted(previous)
    if requeued:
        log.info("jobs_requeued", reason=reason, jobs=len(requeued))
    return requeued
