"""``screener web`` alone queues uploads into the spool: it makes serve's ownership check
first (a spool of another database is refused unless adopted)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from support import build_dicom, free_port, serve_env, wait_for

from screener.db import Database
from screener.db.migrate import upgrade
from screener.ingest.accept import Acceptor
from screener.ingest.ownership import MARKER, claim_spool, database_identity
from screener.ingest.spool import Spool


def _web(env: dict[str, str], cwd: Path, *extra: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``screener web`` started, and followed until it has either exited or started."""
    log = cwd / f"web-{len(list(cwd.glob('web-*.log')))}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "screener.cli", "web", *extra],
            cwd=cwd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: proc.poll() is not None or "web_started" in log.read_text(), 60)
    except BaseException:
        proc.kill()
        proc.wait(30)
        raise
    return proc, log


def _stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    return proc.wait(60)


def test_web_alone_refuses_a_spool_of_another_database_unless_adopted(tmp_path: Path) -> None:
    """`screener web` exits with serve's one-line refusal when storage.spool_dir holds another
    database's files, and with --adopt-spool starts and records the spool as ours."""
    env = serve_env(
        tmp_path,
        f"sqlite:///{tmp_path / 'ours.db'}",
        free_port(),
        screener_web_port=str(free_port()),
    )
    other = Database(f"sqlite:///{tmp_path / 'other.db'}")
    upgrade(other)
    spool = Spool(env["SCREENER_STORAGE_SPOOL_DIR"], 0)
    claim_spool(other, spool, adopt=False)
    from screener.config import load_settings

    settings = load_settings(path=tmp_path / "none.toml", environ=env)
    Acceptor(other, spool, settings).accept(build_dicom(), source="dicom")
    theirs = database_identity(other)
    other.dispose()
    ours = Database(env["SCREENER_DATABASE_URL"])
    upgrade(ours)

    proc, log = _web(env, tmp_path)
    if proc.poll() is None:
        _stop(proc)
    assert proc.returncode == 2, log.read_text()[-3000:]
    last = log.read_text().strip().splitlines()[-1]
    assert "belongs to another database" in last and "--adopt-spool" in last, last
    assert (spool.root / MARKER).read_text().strip() == theirs

    proc, log = _web(env, tmp_path, "--adopt-spool")
    assert proc.poll() is None, log.read_text()[-3000:]
    assert _stop(proc) == 0
    assert (spool.root / MARKER).read_text().strip() == database_identity(ours)
    ours.dispose()
