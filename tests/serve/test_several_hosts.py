"""Several hosts on one PostgreSQL queue and one spool path: a listener+exporter host and three
worker hosts (separate processes, each in its own folder, sharing only the database URL and the
spool path). A backlog is drained while one worker is SIGKILLed midway: nothing is lost,
nothing is scored twice, no SR is sent twice (dcmtk's storescp keeps every copy it receives).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from support import (
    ServeProcess,
    build_dicom,
    c_store,
    dcmtk_tool,
    free_port,
    fresh_pg_database,
    serve_env,
    sr_deliveries,
    wait_for,
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.postgres,
    pytest.mark.skipif(dcmtk_tool("storescp") is None, reason="dcmtk's storescp not installed"),
]

FILMS = 36


@pytest.fixture
def pg_url(postgres_admin: str) -> Iterator[str]:
    url, drop = fresh_pg_database(postgres_admin)
    try:
        yield url
    finally:
        drop()


@pytest.mark.timeout(300)  # 60 s on a loaded 2-core host
def test_three_worker_hosts_drain_a_backlog_through_a_sigkill(tmp_path: Path, pg_url: str) -> None:
    """Three worker hosts sharing PostgreSQL and a spool drain a backlog through a SIGKILL with no
    film lost, scored twice or reported twice."""
    engine = create_engine(pg_url)

    def one(sql: str) -> int:
        with engine.connect() as c:
            return int(c.execute(text(sql)).scalar() or 0)

    pacs_dir, pacs_port, port = tmp_path / "pacs", free_port(), free_port()
    pacs_dir.mkdir()
    pacs = subprocess.Popen(
        [str(dcmtk_tool("storescp")), "-od", str(pacs_dir), "+uf", "-aet", "PACS", "+xa", str(pacs_port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    shared_spool = tmp_path / "shared" / "spool"
    (tmp_path / "none.toml").write_text("")
    common = {  # all a worker host has in common with the others
        "SCREENER_DATABASE_URL": pg_url,
        "SCREENER_STORAGE_SPOOL_DIR": str(shared_spool),
        "SCREENER_EXPORT_DESTINATIONS": f"PACS@127.0.0.1:{pacs_port}",  # workers plan the SRs
        "SCREENER_QUEUE_LEASE_SECONDS": "8",
        "SCREENER_WORKER_MAX_BATCH": "4",
        "SCREENER_WORKER_POLL_SECONDS": "0.05",
        "SCREENER_WORKER_DECODE_PROCESSES": "1",
        "SCREENER_WORKER_INFERENCE_THREADS": "1",
        "SCREENER_POPULATION_MAX_AGE_YEARS": "120",
        "SCREENER_LOGGING_FORMAT": "json",
        "SCREENER_CONFIG": str(tmp_path / "none.toml"),
    }
    front = tmp_path / "front"
    front.mkdir()
    env = serve_env(front, pg_url, port, **{k.lower(): v for k, v in common.items()})
    workers: list[subprocess.Popen[bytes]] = []
    listener: ServeProcess | None = None
    try:
        listener = ServeProcess(front, env).start("--roles", "listener,exporter")
        films = []
        for i in range(FILMS):
            films.append(tmp_path / f"film{i}.dcm")
            films[-1].write_bytes(build_dicom(rows=96, columns=96, seed=i))
        assert c_store(port, films) == [0] * FILMS
        assert one("select count(*) from jobs where state = 'queued'") == FILMS  # a backlog
        # held back until every worker host has loaded its model, so that they share it (the
        # first one up would otherwise drain 36 small films before the others are ready)
        with engine.begin() as c:
            c.execute(
                text(
                    "update jobs set state = 'processing', lease_owner = 'test-hold', "
                    "lease_expires_at = now() + interval '1 hour' where state = 'queued'"
                )
            )

        for n in range(3):
            host = tmp_path / f"worker{n}"
            host.mkdir()
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "screener.cli", "worker"],
                    cwd=host,
                    env={**os.environ, **common},
                    stdout=(host / "log").open("wb"),
                    stderr=subprocess.STDOUT,
                )
            )
        wait_for(
            lambda: all(
                '"worker_started"' in (tmp_path / f"worker{n}" / "log").read_text()
                for n in range(3)
            ),
            240,
            0.2,
        )
        with engine.begin() as c:
            c.execute(
                text(
                    "update jobs set state = 'queued', lease_owner = null, "
                    "lease_expires_at = null where lease_owner = 'test-hold'"
                )
            )
        wait_for(lambda: one("select count(*) from jobs where state = 'done'") >= 8, 240, 0.2)
        workers[0].send_signal(signal.SIGKILL)  # midway, perhaps holding a leased batch
        workers[0].wait(timeout=30)
        wait_for(lambda: one("select count(*) from jobs where state = 'done'") == FILMS, 300, 0.5)
        wait_for(
            lambda: one("select count(*) from exports where state = 'delivered'") == FILMS, 120, 0.5
        )
    finally:
        for w in workers[1:]:
            w.send_signal(signal.SIGTERM)
        for w in workers[1:]:
            w.wait(timeout=120)
        pacs.terminate()
        pacs.wait(timeout=30)
        if listener is not None:
            assert listener.terminate() == 0, listener.log()[-3000:]
    assert one("select count(*) from instances") == FILMS  # 0 lost
    assert one("select count(*) from results") == FILMS  # 0 scored twice
    assert one("select count(distinct instance_id) from results") == FILMS
    assert one("select count(*) from exports") == FILMS
    per_sr, per_source = sr_deliveries(pacs_dir.iterdir())
    assert len(per_source) == FILMS and set(per_source.values()) == {1}  # 0 SRs sent twice
    assert set(per_sr.values()) == {1}
    scored_by = [
        n for n in range(3) if '"batch_done"' in (tmp_path / f"worker{n}" / "log").read_text()
    ]
    assert len(scored_by) >= 2, "the backlog should have been shared between worker hosts"
    engine.dispose()
