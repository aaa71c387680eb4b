"""The folder watcher: DICOM recognised by content, settled files only, rejects kept with a reason."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import structlog
from sqlalchemy import select
from structlog.testing import capture_logs
from support import build_dicom, free_port, run_screener, serve_env, wait_for

from screener.db import AuditEvent, Instance, Job, JobState


def _job_states(daemon: Any) -> list[tuple[str, str | None]]:
    with daemon.db.transaction() as s:
        return [(j.state, j.reason) for j in s.scalars(select(Job).order_by(Job.id))]


def test_dicom_with_any_name_is_taken_and_removed(running_daemon: Callable[..., Any]) -> None:
    """A DICOM file named without an extension is accepted, queued and removed from the folder."""
    daemon = running_daemon()
    dropped = daemon.watcher.dir / "IMG0001"
    dropped.write_bytes(build_dicom())
    wait_for(lambda: _job_states(daemon) == [("queued", None)])
    wait_for(lambda: not dropped.exists())
    with daemon.db.transaction() as s:
        assert s.scalars(select(Instance.source)).one() == "folder"


def test_non_dicom_and_broken_files_are_rejected_with_a_reason(
    running_daemon: Callable[..., Any],
) -> None:
    """A text file and a DICOM without pixel data go to rejected/ with a .reason.txt and a rejected job; the watcher goes on."""
    daemon = running_daemon()
    (daemon.watcher.dir / "notes.dcm").write_text("this is not an image\n" * 20)
    (daemon.watcher.dir / "nopixels").write_bytes(build_dicom(pixel_data=False))
    wait_for(lambda: len(_job_states(daemon)) == 2)
    assert sorted(_job_states(daemon)) == [("rejected", "no_pixel_data"), ("rejected", "not_dicom")]
    rejected = sorted(p.name for p in daemon.watcher.rejected_dir.iterdir())
    assert len(rejected) == 4 and sum(n.endswith(".reason.txt") for n in rejected) == 2
    reasons = [
        p.read_text()
        for p in daemon.watcher.rejected_dir.iterdir()
        if p.name.endswith(".reason.txt")
    ]
    assert any("reason: not_dicom" in text for text in reasons)
    with daemon.db.transaction() as s:
        paths = list(s.scalars(select(Job.source_path).where(Job.state == JobState.REJECTED)))
    assert all(Path(p).is_file() for p in paths)
    # still watching
    (daemon.watcher.dir / "good").write_bytes(build_dicom())
    wait_for(lambda: ("queued", None) in _job_states(daemon))


def test_files_present_at_start_up_are_picked_up(
    make_settings: Callable[..., Any], tmp_path: Path
) -> None:
    """Files dropped while the daemon was down are taken when it starts."""
    from screener.serve.daemon import compose

    settings = make_settings(worker__enabled=False, listener__enabled=False)
    incoming = Path(settings.watch.dir)
    (incoming / "sub").mkdir(parents=True)
    (incoming / "sub" / "a.bin").write_bytes(build_dicom())
    (incoming / "b").write_bytes(build_dicom())
    daemon = compose(settings)
    daemon.start()
    try:
        wait_for(lambda: _job_states(daemon) == [("queued", None)] * 2)
    finally:
        daemon.stop()


def test_a_growing_file_is_not_taken_until_it_settles(make_settings: Callable[..., Any]) -> None:
    """A file whose size keeps changing is left alone; once unchanged for settle_seconds it is taken."""
    from screener.ingest.accept import Acceptor
    from screener.ingest.watcher import FolderWatcher
    from screener.serve.daemon import compose

    settings = make_settings(watch__settle_seconds=0.5)
    daemon = compose(
        make_settings(worker__enabled=False, listener__enabled=False, watch__enabled=False)
    )
    watcher = FolderWatcher(settings.watch, Acceptor(daemon.db, daemon.acceptor.spool, settings))
    data = build_dicom(rows=256, columns=256)
    path = watcher.dir / "slow.dcm"
    with open(path, "wb") as fh:
        fh.write(data[:1000])
        fh.flush()
        watcher.notice(path)
        assert watcher.process_settled() == 0  # first sight: size recorded
        fh.write(data[1000:5000])
        fh.flush()
        os.utime(path)
        assert watcher.process_settled() == 0  # grew: clock restarted
        fh.write(data[5000:])
    wait_for(lambda: watcher.process_settled() == 1, timeout=10)
    assert _job_states(daemon) == [("queued", None)]
    daemon.stop()


#: Parts of a dropped file's name and of its folder's name: a patient's name and IDs.
PHI_FOLDER = "Smith_Jane_ID998877"
PHI_NAME = "DOE^JOHN_12345678"
PHI_FRAGMENTS = ("DOE", "JOHN", "12345678", "Smith", "998877")


@contextmanager
def _json_log() -> Iterator[io.StringIO]:
    """Everything logged (structlog and stdlib) as the JSON lines a process writes; restored after."""
    from screener.config import LoggingSettings
    from screener.runtime.logs import configure_logging

    old_config = structlog.get_config()
    root = logging.getLogger()
    old_handlers, old_level = root.handlers[:], root.level
    out = io.StringIO()
    configure_logging(LoggingSettings(format="json", level="debug"), stream=out)
    try:
        yield out
    finally:
        structlog.configure(**old_config)
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in old_handlers:
            root.addHandler(handler)
        root.setLevel(old_level)


def _phi_in(text: str) -> list[str]:
    return [f for f in PHI_FRAGMENTS if f in text]


def test_dropped_file_and_folder_names_are_recorded_nowhere(
    db_url: str,
    make_settings: Callable[..., Any],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Names of dropped files and their folders appear in no log line, database row, rejected file or `screener status`: a content digest does."""
    from screener.serve.daemon import compose

    good = build_dicom(sop_instance_uid="1.2.3.4.5", study_instance_uid="1.2.3.4")
    junk = b"not an image at all\n" * 20
    real_read_bytes = Path.read_bytes

    def read_bytes(self: Path) -> bytes:  # one file that cannot be read (OSError names it)
        if self.name.endswith("_unreadable.dcm"):
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    settings = make_settings(db_url, worker__enabled=False, listener__enabled=False)
    daemon = compose(settings)
    assert daemon.watcher is not None
    with _json_log() as out:
        daemon.start()
        try:
            folder = daemon.watcher.dir / PHI_FOLDER
            folder.mkdir()
            (folder / f"{PHI_NAME}.dcm").write_bytes(good)
            (folder / f"{PHI_NAME}_notes.dcm").write_bytes(junk)
            (folder / f"{PHI_NAME}_unreadable.dcm").write_bytes(junk + b"!")
            wait_for(lambda: len(_job_states(daemon)) == 3)
            wait_for(lambda: not any(folder.iterdir()))
        finally:
            daemon.stop()
    assert sorted(_job_states(daemon)) == [
        ("queued", None),
        ("rejected", "not_dicom"),
        ("rejected", "unreadable_file"),
    ]

    assert _phi_in(out.getvalue()) == []
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    taken = next(e for e in events if e["event"] == "watch_file_taken")
    assert taken["file_sha256"] == hashlib.sha256(good).hexdigest()[:16]
    assert any(e["event"] == "watch_file_unreadable" for e in events)

    with daemon.db.transaction() as s:
        rows = [*s.execute(select(Job.__table__)).all(), *s.execute(select(AuditEvent.__table__))]
    stored = "\n".join(str(value) for row in rows for value in row if value is not None)
    assert "cannot read the file: Permission denied" in stored
    assert _phi_in(stored) == []

    rejected = sorted(daemon.watcher.rejected_dir.iterdir())
    assert len(rejected) == 4 and _phi_in(" ".join(p.name for p in rejected)) == []
    reasons = [p.read_text() for p in rejected if p.name.endswith(".reason.txt")]
    assert any(f"file_sha256: {hashlib.sha256(junk).hexdigest()[:16]}" in r for r in reasons)
    assert _phi_in("\n".join(reasons)) == []

    env = serve_env(tmp_path, db_url, free_port())
    for args in (("status",), ("status", "--json")):
        status = run_screener(env, tmp_path, *args)
        assert status.returncode == 0, status.stderr
        assert "not_dicom" in status.stdout and "unreadable_file" in status.stdout
        assert _phi_in(status.stdout + status.stderr) == []


def test_a_deferred_file_is_logged_once_and_when_taken(make_settings: Callable[..., Any]) -> None:
    """A file held back by the spool's disk floor logs watch_file_deferred once, not every poll, and watch_file_resumed when taken."""
    from screener.serve.daemon import compose

    daemon = compose(
        make_settings(worker__enabled=False, listener__enabled=False, storage__min_free_mb=10**9)
    )
    assert daemon.watcher is not None
    with capture_logs() as logs:
        daemon.start()
        try:
            (daemon.watcher.dir / "IMG0001").write_bytes(build_dicom())
            wait_for(lambda: any(e["event"] == "watch_file_deferred" for e in logs))
            time.sleep(2.0)  # ~40 polls below the floor
            assert _job_states(daemon) == []
            deferred = [e for e in logs if e["event"] == "watch_file_deferred"]
            assert len(deferred) == 1 and "file_sha256" in deferred[0]
            daemon.acceptor.spool.min_free_bytes = 0  # space is back
            wait_for(lambda: _job_states(daemon) == [("queued", None)])
            wait_for(lambda: any(e["event"] == "watch_file_taken" for e in logs))
        finally:
            daemon.stop()
    resumed = [e for e in logs if e["event"] == "watch_file_resumed"]
    assert len(resumed) == 1 and resumed[0]["file_sha256"] == deferred[0]["file_sha256"]
    assert [e["event"] for e in logs].count("watch_file_deferred") == 1
