"""Files left in the watch folder while the daemon was down are taken by a rescan."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rescan.rescan_support import Store
from sqlalchemy import select
from support import build_dicom

from screener.db import Instance, Job
from screener.rescan import run_rescan


def _jobs(st: Store) -> list[tuple[str, str | None]]:
    with st.db.transaction() as s:
        return [(j.state, j.reason) for j in s.scalars(select(Job).order_by(Job.id))]


def test_rescan_takes_files_left_in_the_watch_folder(store: Callable[..., Store]) -> None:
    """A DICOM left in watch.dir is queued (source folder) and deleted; a text file is rejected with its reason."""
    st = store()
    incoming = Path(st.settings.watch.dir)
    (incoming / "sub").mkdir(parents=True)
    left = incoming / "sub" / "IMG0001"
    left.write_bytes(build_dicom())
    junk = incoming / "notes.txt"
    junk.write_text("not an image\n" * 10)

    summary = run_rescan(st.settings, query_pacs=False, progress=False)

    assert (summary.folder_files, summary.folder_taken, summary.folder_rejected) == (2, 2, 1)
    assert summary.folder_left == 0
    assert not left.exists() and not junk.exists()
    assert sorted(_jobs(st)) == [("queued", None), ("rejected", "not_dicom")]
    with st.db.transaction() as s:
        assert s.scalars(select(Instance.source)).one() == "folder"
    rejected = Path(st.settings.watch.rejected_dir)
    reason = next(rejected.glob("*.reason.txt"))
    assert "reason: not_dicom" in reason.read_text()


def test_dry_run_lists_folder_files_and_leaves_them(
    store: Callable[..., Store], capsys: pytest.CaptureFixture[str]
) -> None:
    """--dry-run counts the files in watch.dir and lists them by content digest, never by
    name (names carry PHI); it takes none and records nothing."""
    import hashlib

    st = store()
    incoming = Path(st.settings.watch.dir)
    incoming.mkdir(parents=True)
    data = build_dicom()
    (incoming / "DOE^JOHN_12345678.dcm").write_bytes(data)
    summary = run_rescan(st.settings, query_pacs=False, progress=True, dry_run=True)
    assert (summary.folder_files, summary.folder_taken, summary.folder_left) == (1, 0, 1)
    assert (incoming / "DOE^JOHN_12345678.dcm").exists()
    assert _jobs(st) == []
    said = capsys.readouterr().err
    assert f"would take file_sha256 {hashlib.sha256(data).hexdigest()[:16]}" in said
    assert "DOE" not in said and "12345678" not in said


def test_a_missing_watch_folder_is_not_an_error(store: Callable[..., Store]) -> None:
    """With no watch.dir on disk the folder step finds nothing and creates nothing."""
    st = store()
    summary = run_rescan(st.settings, query_pacs=False, progress=False)
    assert summary.folder_files == 0 and summary.ok
    assert not Path(st.settings.watch.dir).exists()
