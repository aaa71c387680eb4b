"""The nightly rescan inside ``serve`` and ``screener rescan`` alone use the accept path
that ``serve`` uses: jobs they queue wake the daemon's workers, and the spool they write
to has passed the ownership check (:func:`screener.ingest.ownership.claim_spool`)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update
from support import build_dicom, wait_for

from screener.config import Settings
from screener.db import Database, Job, JobState
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.ownership import MARKER, claim_spool, database_identity
from screener.ingest.spool import Spool
from screener.rescan import RescanSummary, run_rescan
from screener.serve.daemon import Daemon, compose
from screener.work.worker import SpoolCheckProcessor

#: the worker's polling fallback: a job that waits for it is not picked up during a test
NEVER = 3600.0


def _states(db: Database) -> list[str]:
    with db.transaction() as s:
        return [str(state) for state in s.scalars(select(Job.state).order_by(Job.id))]


@pytest.fixture
def daemon_with_rescan(
    make_settings: Callable[..., Settings],
) -> Iterator[Callable[..., Daemon]]:
    """A composed daemon (listener, no watcher, an in-process worker that polls only every
    hour, a nightly rescan); stopped at teardown."""
    made: list[Daemon] = []

    def make(db_url: str, before_start: Callable[[Daemon], Any] | None = None) -> Daemon:
        settings = make_settings(
            db_url,
            worker__poll_seconds=NEVER,
            watch__enabled=False,  # so the rescan takes the folder itself
            rescan__schedule="03:00",
        )
        daemon = compose(settings, processor=SpoolCheckProcessor())
        made.append(daemon)
        if before_start is not None:
            before_start(daemon)
        daemon.start()
        return daemon

    yield make
    for daemon in made:
        daemon.stop()


def _run_scheduled(daemon: Daemon) -> RescanSummary:
    assert daemon.scheduler is not None, "serve with a listener and rescan.schedule has a rescan"
    summary = daemon.scheduler.run_now()
    assert summary is not None
    return summary


def test_a_file_the_nightly_rescan_takes_wakes_the_daemons_worker(
    db_url: str, daemon_with_rescan: Callable[..., Daemon]
) -> None:
    """A file the scheduled rescan takes from the watch folder is scored by the daemon's
    worker through the wake-up, its polling fallback being an hour."""
    daemon = daemon_with_rescan(db_url)
    incoming = Path(daemon.settings.watch.dir)
    incoming.mkdir(parents=True, exist_ok=True)
    (incoming / "IMG0001").write_bytes(build_dicom())

    summary = _run_scheduled(daemon)

    assert (summary.folder_taken, summary.errors) == (1, [])
    wait_for(lambda: _states(daemon.db) == ["done"], 30)


def test_a_job_the_nightly_rescan_requeues_wakes_the_daemons_worker(
    db_url: str, daemon_with_rescan: Callable[..., Daemon]
) -> None:
    """A retryable failed job that the scheduled rescan re-queues is taken by the daemon's
    worker through the wake-up, its polling fallback being an hour."""

    def fail_one(daemon: Daemon) -> None:  # before the worker runs
        daemon.acceptor.accept(build_dicom(), source="dicom")
        with daemon.db.transaction() as s:
            s.execute(update(Job).values(state=JobState.FAILED, reason="processor_error"))

    daemon = daemon_with_rescan(db_url, before_start=fail_one)
    assert _states(daemon.db) == ["failed"]

    summary = _run_scheduled(daemon)

    assert len(summary.requeued_failed) == 1
    wait_for(lambda: _states(daemon.db) == ["done"], 30)


def test_rescan_alone_leaves_the_files_when_the_spool_is_another_databases(
    make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """``screener rescan`` refuses, as serve does, to take the watch folder into a spool that
    holds another database's files; with storage.adopt_spool it takes them."""
    other = make_settings(f"sqlite:///{tmp_path / 'other.db'}")
    other_db = Database(other.database.url)
    upgrade(other_db)
    spool = Spool(other.storage.spool_dir, 0)
    claim_spool(other_db, spool, adopt=False)
    Acceptor(other_db, spool, other).accept(build_dicom(), source="dicom")
    other_db.dispose()

    settings = make_settings(f"sqlite:///{tmp_path / 'ours.db'}")
    ours = Database(settings.database.url)
    upgrade(ours)
    incoming = Path(settings.watch.dir)
    incoming.mkdir(parents=True, exist_ok=True)
    left = incoming / "IMG0001"
    left.write_bytes(build_dicom())

    refused = run_rescan(settings, query_pacs=False, progress=False)

    assert refused.folder_taken == 0 and left.exists()
    assert any("belongs to another database" in e for e in refused.errors), refused.errors
    assert _states(ours) == []

    adopted = make_settings(settings.database.url, storage__adopt_spool=True)
    summary = run_rescan(adopted, query_pacs=False, progress=False)

    assert (summary.folder_taken, summary.errors) == (1, [])
    assert (spool.root / MARKER).read_text().strip() == database_identity(ours)
    assert _states(ours) == ["queued"]
    ours.dispose()
