"""Group commit of accepted instances, on SQLite and PostgreSQL: instances that arrive while
another commit runs are committed together, each caller returns only after its own rows are
in, and one bad arrival fails alone."""

from __future__ import annotations

import dataclasses
import io
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread
from sqlalchemy import func, select
from support import build_dicom

from screener.config import Settings
from screener.db import Database, Instance, Job
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.record import Arrival, GroupCommit, Header, Recorded
from screener.ingest.spool import Spool


def _arrival(tmp_path: Path, seed: int, **header: object) -> Arrival:
    data = build_dicom(seed=seed)
    ds = dcmread(io.BytesIO(data))
    values = {**Header.of(ds).__dict__, **header}
    return Arrival(
        header=Header(**values),
        sha256=f"{seed:064x}",
        size=len(data),
        source="dicom",
        calling_ae_title="MODALITY",
        spool_path=tmp_path / f"{seed}.dcm",
        skip=None,
        replace=True,
        file_was_there=False,
    )


def _wait_for(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + 30
    while not condition():
        assert time.monotonic() < deadline, "threads did not queue up"
        time.sleep(0.01)


def _submit_while_a_commit_runs(
    commits: GroupCommit, arrivals: list[Arrival]
) -> tuple[dict[int, Recorded], dict[int, BaseException]]:
    """Hold the commit (as a running one would) while every arrival is submitted, then let go."""
    done: dict[int, Recorded] = {}
    failed: dict[int, BaseException] = {}

    def submit(i: int) -> None:
        try:
            done[i] = commits.submit(arrivals[i])
        except Exception as exc:
            failed[i] = exc

    with commits._leader:
        threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(arrivals))]
        for t in threads:
            t.start()
        _wait_for(lambda: len(commits._waiting) == len(arrivals))
    for t in threads:
        t.join(60)
    return done, failed


def test_waiting_arrivals_are_committed_in_one_transaction(
    db_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """Six arrivals queued behind a running commit go in one transaction; all six are recorded."""
    db = Database(make_settings(db_url).database.url)
    upgrade(db)
    groups: list[int] = []
    commits = GroupCommit(db, on_group=groups.append)
    arrivals = [_arrival(tmp_path, i) for i in range(6)]
    done, failed = _submit_while_a_commit_runs(commits, arrivals)
    assert failed == {}
    assert groups == [6]
    assert sorted(r.outcome for r in done.values()) == ["queued"] * 6
    assert len({r.job_id for r in done.values()}) == 6
    with db.transaction() as s:
        assert s.scalar(select(func.count()).select_from(Instance)) == 6
        assert s.scalar(select(func.count()).select_from(Job)) == 6
    db.dispose()


def test_one_bad_arrival_fails_alone(
    db_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """An arrival the database refuses (a NOT NULL column empty) fails; the others in its
    group are committed one by one."""
    db = Database(make_settings(db_url).database.url)
    upgrade(db)
    commits = GroupCommit(db)
    arrivals = [_arrival(tmp_path, i) for i in range(4)]
    arrivals[2] = _arrival(tmp_path, 2, sop_class_uid=None)
    done, failed = _submit_while_a_commit_runs(commits, arrivals)
    assert sorted(done) == [0, 1, 3]
    assert list(failed) == [2]
    with db.transaction() as s:
        uids = set(s.scalars(select(Instance.sop_instance_uid)))
    assert uids == {arrivals[i].header.sop_instance_uid for i in (0, 1, 3)}
    db.dispose()


def test_a_duplicate_in_the_same_group_is_seen(
    db_url: str, make_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """The same instance twice in one group: the second sees the first's row (a duplicate)."""
    db = Database(make_settings(db_url).database.url)
    upgrade(db)
    commits = GroupCommit(db)
    first = _arrival(tmp_path, 7)
    first.spool_path.write_bytes(b"spooled by the first")
    again = dataclasses.replace(first, file_was_there=True)
    done, failed = _submit_while_a_commit_runs(commits, [first, again])
    assert failed == {}
    assert sorted(r.outcome for r in done.values()) == ["duplicate", "queued"]
    db.dispose()


@pytest.mark.parametrize("streams", [4])
def test_concurrent_accepts_lose_nothing(
    db_url: str, make_settings: Callable[..., Settings], streams: int
) -> None:
    """Four threads accept 60 films, each also sent twice by two threads at once: 60
    instances, 60 jobs, every spooled file present, 60 duplicates, no file left over."""
    settings = make_settings(db_url)
    db = Database(settings.database.url)
    upgrade(db)
    spool = Spool(settings.storage.spool_dir, 0)
    acceptor = Acceptor(db, spool, settings)
    films = [build_dicom(seed=100 + i) for i in range(60)]
    outcomes: list[str] = []
    lock = threading.Lock()

    def send(chunk: list[bytes]) -> None:
        for data in chunk:
            outcome = acceptor.accept(data, source="dicom").outcome
            with lock:
                outcomes.append(outcome)

    # every film goes to two of the threads
    chunks = [films[i::streams] + films[(i + 1) % streams :: streams] for i in range(streams)]
    threads = [threading.Thread(target=send, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert sorted(set(outcomes)) == ["duplicate", "queued"]
    assert outcomes.count("queued") == 60 and outcomes.count("duplicate") == 60
    with db.transaction() as s:
        paths = list(s.scalars(select(Instance.spool_path)))
        assert s.scalar(select(func.count()).select_from(Job)) == 60
    assert len(paths) == 60 and all(Path(p).is_file() for p in paths)
    assert sorted(map(str, spool.files())) == sorted(paths)
    db.dispose()
