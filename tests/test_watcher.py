"""The folder watcher: DICOM recognised by content, settled files only, rejects kept with a reason."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select
from support import build_dicom, wait_for

from screener.db import Instance, Job, JobState


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
    reason = next(
        p
        for p in daemon.watcher.rejected_dir.iterdir()
        if "notes" in p.name and p.name.endswith(".reason.txt")
    )
    assert "reason: not_dicom" in reason.read_text()
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
    from screener.daemon import compose

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
    from screener.daemon import compose
    from screener.ingest.accept import Acceptor
    from screener.ingest.watcher import FolderWatcher

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
