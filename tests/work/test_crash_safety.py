"""Nothing accepted is lost: SIGKILL after Success, a worker killed mid-job, SIGTERM shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

from sqlalchemy import select
from support import ServeProcess, c_store, free_port, serve_env, wait_for

from screener.db import Database, Job, JobState, Result


def _states(url: str) -> dict[str, str]:
    db = Database(url)
    try:
        with db.transaction() as s:
            return {str(j.id): j.state for j in s.scalars(select(Job))}
    finally:
        db.dispose()


def test_sigkill_after_success_loses_nothing(
    db_url: str,
    tmp_path: Path,
    serve_process: Callable[[dict[str, str]], ServeProcess],
    dicom_dir: Path,
    dicom_file: Callable[..., Path],
    model_bundle: Path,
) -> None:
    """A daemon killed with SIGKILL right after acknowledging stores still has every job after restart, and scores them."""
    port = free_port()
    env = serve_env(tmp_path, db_url, port)
    first = serve_process(env).start("--no-worker")
    # four real films, and one synthetic image (with PHI) too small to screen
    files = sorted((dicom_dir / "siim_chest_cr").glob("*.dcm"))[:4]
    files.append(dicom_file(rows=32, columns=32))
    assert c_store(port, files) == [0] * 5
    first.kill()  # SIGKILL: no shutdown code runs
    assert sorted(_states(db_url).values()) == ["queued"] * 5
    assert len(list((tmp_path / "spool").glob("*/*.dcm"))) == 5
    second = serve_process(env).start()
    # the 4 films are scored; the 32 px synthetic image fails as too small, with its reason
    wait_for(lambda: sorted(_states(db_url).values()) == ["done"] * 4 + ["failed"], timeout=180)
    db = Database(db_url)
    with db.transaction() as s:
        assert len(s.scalars(select(Result)).all()) == 4
        assert (
            s.scalars(select(Job.reason).where(Job.state == JobState.FAILED)).one()
            == "image_too_small"
        )
    db.dispose()
    assert second.terminate() == 0
    log = first.log() + second.log()
    for phi in ("Doe^Jane", "PHI-12345", "19700101"):  # never in a log line
        assert phi not in log


WORKER_SCRIPT = textwrap.dedent(
    """
    import sys, time
    from screener.work import queue
    from screener.db import Database
    db = Database(sys.argv[1])
    batch = queue.dequeue(db, "doomed-worker", 10, lease_seconds=float(sys.argv[2]), max_attempts=3)
    print(",".join(str(j.job_id) for j in batch), flush=True)
    time.sleep(600)  # "processing" until killed
    """
)


def test_worker_killed_mid_job_is_picked_up_after_lease_expiry(
    db_url: str,
    tmp_path: Path,
    dicom_file: Callable[..., Path],
    make_settings: Callable[..., object],
) -> None:
    """A worker process SIGKILLed while holding jobs: once its lease expires another worker takes and finishes them."""
    from screener.config import Settings
    from screener.serve.daemon import compose
    from screener.work.worker import SpoolCheckProcessor, Worker

    settings = make_settings(db_url, worker__enabled=False, watch__enabled=False)
    assert isinstance(settings, Settings)
    daemon = compose(settings)
    daemon.start()
    assert daemon.listener is not None
    try:
        assert c_store(daemon.listener.port, [dicom_file(seed=i) for i in range(3)]) == [0] * 3
    finally:
        daemon.stop()
    proc = subprocess.Popen(
        [sys.executable, "-c", WORKER_SCRIPT, db_url, "5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        leased = proc.stdout.readline().strip().split(",")
        assert len(leased) == 3
        assert set(_states(db_url).values()) == {"processing"}
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    worker = Worker(Database(db_url), settings, SpoolCheckProcessor(), owner="rescuer")
    assert worker.run_once() == 0  # lease not yet expired: nothing to take
    wait_for(lambda: worker.run_once() == 3, timeout=30, interval=0.2)
    db = Database(db_url)
    with db.transaction() as s:
        jobs = s.scalars(select(Job)).all()
        assert {(j.state, j.attempts) for j in jobs} == {(JobState.DONE, 2)}
    db.dispose()
    worker.db.dispose()


def test_sigterm_stops_cleanly(
    tmp_path: Path, serve_process: Callable[[dict[str, str]], ServeProcess], sqlite_url: str
) -> None:
    """SIGTERM makes `screener serve` stop its listener, watcher and worker and exit 0."""
    port = free_port()
    proc = serve_process(serve_env(tmp_path, sqlite_url, port)).start()
    assert proc.terminate() == 0
    events = [json.loads(line)["event"] for line in proc.log().splitlines() if line.startswith("{")]
    assert (
        events.index("signal_received")
        < events.index("listener_stopped")
        < events.index("daemon_stopped")
    )
