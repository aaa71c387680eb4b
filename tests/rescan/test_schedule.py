"""The in-daemon schedule: next-run computation and a scheduler that really fires."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from datetime import time as clock_time

import pytest
from rescan.rescan_support import Store
from structlog.testing import capture_logs
from support import build_dicom, wait_for

from screener.config import Settings
from screener.db import Job, JobState
from screener.errors import ConfigError
from screener.rescan import RescanScheduler, RescanSummary, next_run, parse_schedule


def _summary() -> RescanSummary:
    return RescanSummary(since="s", until="u", dry_run=False, rescore=False)


def _fake_clock(start: datetime) -> Callable[[], datetime]:
    """A wall clock that starts at ``start`` and runs at real speed."""
    t0 = time.monotonic()
    return lambda: start + timedelta(seconds=time.monotonic() - t0)


def test_next_run_is_today_before_the_time_and_tomorrow_after_it() -> None:
    """For 02:00, 01:30 gives today 02:00; 02:00 itself and 14:00 give tomorrow 02:00."""
    at = parse_schedule("02:00")
    assert at == clock_time(2, 0)
    assert next_run(at, datetime(2026, 11, 22, 1, 30)) == datetime(2026, 11, 22, 2, 0)
    assert next_run(at, datetime(2026, 11, 22, 2, 0)) == datetime(2026, 11, 23, 2, 0)
    assert next_run(at, datetime(2026, 11, 22, 14, 0)) == datetime(2026, 11, 23, 2, 0)
    assert next_run(at, datetime(2026, 12, 31, 23, 59)) == datetime(2027, 1, 1, 2, 0)


def test_schedule_text_is_validated_and_empty_means_never() -> None:
    """'' is never, '7:05' is accepted, '24:00', '2pm' and '02:0' stop start-up naming the key."""
    assert parse_schedule("") is None
    assert parse_schedule("7:05") == clock_time(7, 5)
    for bad in ("24:00", "2pm", "02:0", "02:60"):
        with pytest.raises(ConfigError, match=r"rescan\.schedule"):
            parse_schedule(bad)


def test_scheduler_runs_the_rescan_once_when_its_time_comes(
    make_settings: Callable[..., Settings],
) -> None:
    """With the clock a moment before 02:00 the scheduler runs the rescan once, then plans tomorrow."""
    calls: list[Settings] = []
    ran = threading.Event()

    def runner(settings: Settings) -> RescanSummary:
        calls.append(settings)
        ran.set()
        return _summary()

    settings = make_settings(rescan__schedule="02:00")
    clock = _fake_clock(datetime(2026, 11, 22, 1, 59, 59, 700000))
    scheduler = RescanScheduler(settings, runner=runner, clock=clock, poll_seconds=0.05)
    with capture_logs() as logs:
        scheduler.start()
        try:
            assert ran.wait(10)
            wait_for(lambda: scheduler.next_at == datetime(2026, 11, 23, 2, 0))
            time.sleep(0.3)  # several more polls: no second run
        finally:
            scheduler.stop()
    assert calls == [settings]
    assert scheduler.runs == 1
    assert any(e["event"] == "scheduled_rescan_done" for e in logs)


def test_a_failing_rescan_is_logged_and_the_scheduler_goes_on(
    make_settings: Callable[..., Settings],
) -> None:
    """A rescan that raises is logged as scheduled_rescan_failed; the thread plans the next run."""

    def runner(settings: Settings) -> RescanSummary:
        raise RuntimeError("PACS on fire")

    clock = _fake_clock(datetime(2026, 11, 22, 1, 59, 59, 800000))
    scheduler = RescanScheduler(
        make_settings(rescan__schedule="02:00"), runner=runner, clock=clock, poll_seconds=0.05
    )
    with capture_logs() as logs:
        scheduler.start()
        try:
            wait_for(lambda: scheduler.next_at == datetime(2026, 11, 23, 2, 0))
            assert scheduler._thread is not None and scheduler._thread.is_alive()
        finally:
            scheduler.stop()
    assert scheduler.runs == 1
    assert [e["event"] for e in logs].count("scheduled_rescan_failed") == 1


def test_an_empty_schedule_starts_no_thread(make_settings: Callable[..., Settings]) -> None:
    """rescan.schedule = '' (the systemd timer does it instead) starts nothing and never runs."""
    scheduler = RescanScheduler(
        make_settings(rescan__schedule=""), runner=lambda s: _summary(), poll_seconds=0.01
    )
    with capture_logs() as logs:
        scheduler.start()
        scheduler.stop()
    assert scheduler._thread is None and scheduler.runs == 0
    assert [e["event"] for e in logs] == ["rescan_schedule_disabled"]


def test_scheduled_rescan_really_rescans(store: Callable[..., Store]) -> None:
    """With the daemon's runner, a scheduled run re-queues a retryable failed job in the database."""
    st = store(rescan__schedule="02:00")
    accepted = st.acceptor.accept(build_dicom(), source="dicom")
    with st.db.transaction() as s:
        job = s.get(Job, accepted.job_id)
        assert job is not None
        job.state, job.reason = JobState.FAILED, "processor_error"
    scheduler = RescanScheduler(
        st.settings,
        acceptor=st.acceptor,
        clock=_fake_clock(datetime(2026, 11, 22, 1, 59, 59, 800000)),
        poll_seconds=0.05,
    )
    scheduler.start()
    try:
        wait_for(lambda: scheduler.next_at == datetime(2026, 11, 23, 2, 0))
    finally:
        scheduler.stop()
    with st.db.transaction() as s:
        job = s.get(Job, accepted.job_id)
        assert job is not None and job.state == JobState.QUEUED
