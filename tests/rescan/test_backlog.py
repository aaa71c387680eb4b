"""Re-queue of retryable failed jobs, --rescore of stale results, and the "missing study" rule."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from pydicom.uid import generate_uid
from rescan.rescan_support import Store
from sqlalchemy import select
from support import build_dicom

from screener.db import AuditEvent, Job, JobState, Result, utcnow
from screener.rescan import run_rescan
from screener.rescan.backlog import MAX_RESCAN_RETRIES, missing_studies


def _accept(store: Store, study_uid: str | None = None, **kw: object) -> int:
    """Accept one built image; its job id."""
    accepted = store.acceptor.accept(
        build_dicom(study_instance_uid=study_uid or generate_uid(), **kw),  # type: ignore[arg-type]
        source="dicom",
    )
    assert accepted.job_id is not None
    return accepted.job_id


def _set(store: Store, job_id: int, state: str, reason: str | None = None) -> None:
    with store.db.transaction() as s:
        job = s.get(Job, job_id)
        assert job is not None
        job.state, job.reason, job.attempts = state, reason, 3
        job.finished_at = utcnow() if state in (JobState.DONE, JobState.FAILED) else None


def _add_result(store: Store, job_id: int, model_uid: str) -> None:
    now = utcnow()
    with store.db.transaction() as s:
        job = s.get(Job, job_id)
        assert job is not None and job.instance_id is not None
        s.add(
            Result(
                job_id=job_id,
                instance_id=job.instance_id,
                frame_number=1,
                probability=0.8,
                label="pneumonia",
                threshold=0.5,
                model_name="tiny",
                model_version="1.0.0",
                model_uid=model_uid,
                queued_at=now - timedelta(seconds=3),
                started_at=now - timedelta(seconds=2),
                scored_at=now,
            )
        )


def _state(store: Store, job_id: int) -> tuple[str, int]:
    with store.db.transaction() as s:
        job = s.get(Job, job_id)
        assert job is not None
        return job.state, job.attempts


def test_retryable_failed_jobs_are_requeued_and_permanent_ones_left(
    store: Callable[..., Store],
) -> None:
    """processor_error and lease_expired go back to queued with 0 attempts; spool_file_missing and done stay."""
    st = store()
    crashed, expired, gone, done = (_accept(st) for _ in range(4))
    _set(st, crashed, JobState.FAILED, "processor_error")
    _set(st, expired, JobState.FAILED, "lease_expired")
    _set(st, gone, JobState.FAILED, "spool_file_missing")
    _set(st, done, JobState.DONE)

    summary = run_rescan(st.settings, query_pacs=False, progress=False)

    assert summary.requeued_failed == [crashed, expired]
    assert _state(st, crashed) == ("queued", 0) and _state(st, expired) == ("queued", 0)
    assert _state(st, gone) == ("failed", 3) and _state(st, done) == ("done", 3)
    with st.db.transaction() as s:
        audited = s.scalars(
            select(AuditEvent.job_id).where(
                AuditEvent.event == "job_requeued", AuditEvent.reason == "rescan_retry"
            )
        ).all()
    assert sorted(audited, key=lambda job: job or 0) == [crashed, expired]
    assert summary.ok


def test_a_job_that_keeps_failing_is_retried_only_a_bounded_number_of_times(
    store: Callable[..., Store],
) -> None:
    """After MAX_RESCAN_RETRIES rescan retries a job failing again stays failed."""
    st = store()
    job = _accept(st)
    for _ in range(MAX_RESCAN_RETRIES):
        _set(st, job, JobState.FAILED, "processor_error")
        assert run_rescan(st.settings, query_pacs=False, progress=False).requeued_failed == [job]
    _set(st, job, JobState.FAILED, "processor_error")
    assert run_rescan(st.settings, query_pacs=False, progress=False).requeued_failed == []
    assert _state(st, job)[0] == "failed"


def test_rescore_requeues_only_images_scored_by_another_model(
    store: Callable[..., Store], model_bundle: Callable[[str], Path]
) -> None:
    """--rescore re-queues a done job whose result has an old model uid; current-model and unscored jobs stay."""
    current, old = "1.2.826.0.1.3680043.10.999.2", "1.2.826.0.1.3680043.10.999.1"
    st = store(model__bundle=str(model_bundle(current)))
    stale, fresh, rescored_before, unscored = (_accept(st) for _ in range(4))
    for job in (stale, fresh, rescored_before, unscored):
        _set(st, job, JobState.DONE)
    _add_result(st, stale, old)
    _add_result(st, fresh, current)
    _add_result(st, rescored_before, old)
    _add_result(st, rescored_before, current)  # already scored again by the current model

    plain = run_rescan(st.settings, query_pacs=False, progress=False)
    assert plain.requeued_rescore == [] and _state(st, stale)[0] == "done"

    dry = run_rescan(st.settings, query_pacs=False, progress=False, rescore=True, dry_run=True)
    assert dry.requeued_rescore == [stale] and _state(st, stale)[0] == "done"

    summary = run_rescan(st.settings, query_pacs=False, progress=False, rescore=True)
    assert summary.current_model_uid == current
    assert summary.requeued_rescore == [stale]
    assert _state(st, stale) == ("queued", 0)
    assert [_state(st, j)[0] for j in (fresh, rescored_before, unscored)] == ["done"] * 3


def test_rescore_without_a_bundle_is_reported_not_raised(
    store: Callable[..., Store], tmp_path: Path
) -> None:
    """A missing model.json makes the rescore step an error in the summary; the rest still runs."""
    st = store(model__bundle=str(tmp_path / "no-such-bundle"))
    job = _accept(st)
    _set(st, job, JobState.FAILED, "processor_error")
    summary = run_rescan(st.settings, query_pacs=False, progress=False, rescore=True)
    assert summary.requeued_failed == [job]
    assert not summary.ok and "model.json" in summary.errors[0]


def test_missing_study_rule(store: Callable[..., Store]) -> None:
    """Unknown, done-without-result and failed studies are missing; scored, queued and skipped ones are not."""
    st = store()
    uids = {
        name: generate_uid() for name in ("unknown", "done", "failed", "scored", "queued", "lat")
    }
    for name in ("done", "failed", "scored", "queued"):
        job = _accept(st, uids[name])
        if name in ("done", "scored"):
            _set(st, job, JobState.DONE)
        if name == "failed":
            _set(st, job, JobState.FAILED, "spool_file_missing")
        if name == "scored":
            _add_result(st, job, "1.2.3")
    _accept(st, uids["lat"], view_position="LL")  # skipped by selection
    assert missing_studies(st.db, uids.values()) == [uids["unknown"], uids["done"], uids["failed"]]
