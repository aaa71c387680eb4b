"""Spool retention through the real CLI and daemon: only settled images go, rows stay.

Film A's SR waits for an unreachable destination, film D is still queued: neither may be
deleted. Films B and C (2 MB each) were scored with nothing to deliver: ``purge --dry-run``
names them and deletes nothing, the size cap deletes the older one, and the daemon's own
retention run deletes the other. B's study stays on the worklist, its heatmap says why the
image is gone, and a resend of B is a duplicate, not a new screening.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from support import ServeProcess, build_dicom, c_store, free_port, run_screener, serve_env, wait_for


def _rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(db) as c:
        return list(c.execute(sql).fetchall())


def _spooled(db: Path) -> dict[str, tuple[str, object]]:
    rows = _rows(db, "select sop_instance_uid, spool_path, purged_at from instances")
    return {str(uid): (str(path), purged) for uid, path, purged in rows}


@pytest.mark.timeout(300)  # 54 s on a loaded 2-core host
def test_retention_deletes_only_settled_images_and_keeps_their_rows(tmp_path: Path) -> None:
    """Retention (command and daemon) deletes only spooled images whose SR is delivered and keeps
    every database row."""
    port, db = free_port(), tmp_path / "s.db"
    url = f"sqlite:///{db}"
    uids = {name: f"1.2.826.0.1.3680043.10.1234.{i}" for i, name in enumerate("ABCD", 1)}
    films = {}
    for i, (name, uid) in enumerate(uids.items()):
        size = 1024 if name in "BC" else 128  # B and C: 2 MB of 16-bit pixels each
        films[name] = tmp_path / f"{name}.dcm"
        films[name].write_bytes(build_dicom(sop_instance_uid=uid, rows=size, columns=size, seed=i))

    def results() -> int:
        return len(_rows(db, "select id from results"))

    dead = serve_env(
        tmp_path, url, port, screener_export_destinations=f"PACS@127.0.0.1:{free_port()}",
        screener_export_backoff_seconds="3600", screener_storage_purge_interval_minutes="0",
    )  # fmt: skip
    serve = ServeProcess(tmp_path, dead).start()
    assert c_store(port, [films["A"]]) == [0]
    wait_for(lambda: results() == 1, timeout=120, interval=0.2)
    wait_for(lambda: _rows(db, "select attempts from exports")[0][0] >= 1, timeout=60)
    assert serve.terminate() == 0

    env = serve_env(tmp_path, url, port, screener_storage_purge_interval_minutes="0")
    serve = ServeProcess(tmp_path, env).start()
    assert c_store(port, [films["B"]]) == [0]
    wait_for(lambda: results() == 2, timeout=120, interval=0.2)
    assert c_store(port, [films["C"]]) == [0]
    wait_for(lambda: results() == 3, timeout=120, interval=0.2)
    assert serve.terminate() == 0

    cli = {**env, "SCREENER_STORAGE_RETENTION_DAYS": "0.00001"}  # under a second
    dry = run_screener(cli, tmp_path, "purge", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    (settled_bytes,) = _rows(
        db, f"select sum(size_bytes) from instances where sop_instance_uid in "
        f"('{uids['B']}', '{uids['C']}')",
    )[0]  # fmt: skip
    report = json.loads(dry.stdout)
    # audit retention: tests/work/test_audit_retention.py
    assert report.pop("audit")["dry_run"] is True
    assert report | {"oldest_settled": None, "spool_bytes_before": 0} == {
        "dry_run": True, "instances": 2, "bytes": settled_bytes, "by_age": 2,
        "by_size": 0, "spool_bytes_before": 0, "kept_busy": 1, "oldest_settled": None,
    }  # fmt: skip
    assert all(Path(p).is_file() for p, _ in _spooled(db).values())

    capped = {**env, "SCREENER_STORAGE_RETENTION_DAYS": "0", "SCREENER_STORAGE_MAX_SPOOL_MB": "3"}
    done = run_screener(capped, tmp_path, "purge")
    assert done.returncode == 0 and "deleted 1 spooled images" in done.stdout, done.stdout
    spool = _spooled(db)
    assert spool[uids["B"]][1] is not None and not Path(spool[uids["B"]][0]).exists()
    assert spool[uids["C"]][1] is None and Path(spool[uids["C"]][0]).is_file()

    # The daemon's own retention (worker off: D stays queued), with a resend of B.
    timed = serve_env(
        tmp_path, url, port, screener_worker_enabled="false",
        screener_storage_retention_days="0.00001", screener_storage_purge_interval_minutes="0.02",
    )  # fmt: skip
    serve = ServeProcess(tmp_path, timed).start()
    assert c_store(port, [films["D"], films["B"]]) == [0, 0]
    wait_for(lambda: _spooled(db)[uids["C"]][1] is not None, timeout=60, interval=0.2)
    assert serve.terminate() == 0
    spool = _spooled(db)
    assert not Path(spool[uids["C"]][0]).exists()
    for kept in ("A", "D"):  # SR undelivered; still queued
        assert spool[uids[kept]][1] is None and Path(spool[uids[kept]][0]).is_file()
    assert spool[uids["B"]][1] is not None and not Path(spool[uids["B"]][0]).exists()
    assert _rows(db, "select count(*) from jobs") == [(4,)]  # the resend made no job
    assert _rows(db, "select count(*) from results") == [(3,)]

    worklist = run_screener(env, tmp_path, "worklist", "--status", "all", "--format", "json")
    assert worklist.returncode == 0, worklist.stderr
    study_b = _rows(
        db,
        "select s.study_instance_uid from studies s join instances i on i.study_id = s.id "
        f"where i.sop_instance_uid = '{uids['B']}'",
    )[0][0]
    assert study_b in worklist.stdout
    shown = run_screener(env, tmp_path, "show", str(study_b), "--heatmap", str(tmp_path / "h.png"))
    assert shown.returncode == 1 and "deleted from the spool" in shown.stderr, shown.stderr
    assert "retention_days" in shown.stderr and not (tmp_path / "h.png").exists()
    text = run_screener(env, tmp_path, "show", str(study_b))
    assert "image file deleted by retention" in text.stdout
