"""Ingest latency while retention purges 50,000 expired images (issue 24).

    .venv/bin/python benchmarks/bench_purge.py [--images 50000] [--films 400] [--batch 500]

A SQLite database is brought to head (the project's Alembic upgrade) and filled, not through
the daemon, with ``--images`` settled images received 60 days ago (one study, one image and
one done job each; a small file each in the spool). ``screener serve`` (worker off, its own
retention off) is started on it with ``storage.retention_days = 30``. dcmtk's storescu
(``TCP_NODELAY=1``, one association at a time) then pushes fresh films, 50 per
association: half of ``--films`` with nothing else running, then more (of ``--pool``) while
a second process runs retention's :func:`purge` over the expired images with ``batch``
images per transaction, until it ends, then the other half of ``--films`` (both halves are
the baseline, so that a change in the host's load shows). Each C-STORE's latency is read
from storescu's own log (a log4cplus pattern with microsecond time stamps: from "Sending
Store Request" to "Received Store Response").
``--batch 1000000`` reads and marks the whole spool in one transaction each, as purge did
before issue 24. Prints p50/p95/max latency for both phases and the purge's own time.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_ingest import free_port, make_films, serve_env, wait_listening  # noqa: E402

LOG_CONFIG = """log4cplus.rootLogger = DEBUG, console
log4cplus.appender.console = log4cplus::ConsoleAppender
log4cplus.appender.console.layout = log4cplus::PatternLayout
log4cplus.appender.console.layout.ConversionPattern = %D{%H:%M:%S.%Q} %m%n
"""

PURGE = """
import sys, time
from screener.config import load_settings
from screener.db import Database
from screener.work.retention import purge
settings = load_settings()
db = Database(settings.database.url)
t0 = time.perf_counter()
summary = purge(db, settings, batch=int(sys.argv[1]))
print(summary.instances, len(summary.purged_ids), f"{time.perf_counter() - t0:.3f}")
"""


def fill(run: Path, images: int) -> None:
    """``images`` settled images received 60 days ago, their files in ``run/spool/old``."""
    from screener.db import Database
    from screener.db.migrate import upgrade

    db = Database(f"sqlite:///{run / 'db.sqlite'}")
    try:
        upgrade(db)
    finally:
        db.dispose()
    at = (datetime.now(UTC) - timedelta(days=60)).isoformat(sep=" ")
    old = run / "spool" / "old"
    studies, instances, jobs = [], [], []
    for i in range(1, images + 1):
        path = old / f"{i % 256:02x}" / f"{i}.dcm"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0" * 512)
        uid = f"1.2.826.0.1.3680043.10.9924.{i}"
        studies.append((i, uid, f"A{i:08d}", "20261006", "120000", "CR", at, at))
        instances.append((i, i, f"{uid}.1", f"{uid}.1.1", "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.1.2.1", "CR", "PA", 224, 224, 1, 8, "MONOCHROME2", str(path),
            f"{i:064x}", 512, "dicom", "MODALITY1", 1, at, at))  # fmt: skip
        jobs.append((i, i, "done", 0, 1, None, None, at, at, at, at))
    conn = sqlite3.connect(run / "db.sqlite", isolation_level=None)
    conn.execute("BEGIN")
    for table, rows in (("studies", studies), ("instances", instances), ("jobs", jobs)):
        cols = {
            "studies": "id, study_instance_uid, accession_number, study_date, study_time, "
            "modality, created_at, updated_at",
            "instances": "id, study_id, series_instance_uid, sop_instance_uid, sop_class_uid, "
            "transfer_syntax_uid, modality, view_position, rows, columns, number_of_frames, "
            "bits_stored, photometric_interpretation, spool_path, content_sha256, size_bytes, "
            "source, calling_ae_title, receive_count, received_at, updated_at",
            "jobs": "id, instance_id, state, priority, attempts, reason, last_error, "
            "created_at, started_at, finished_at, updated_at",
        }[table]
        marks = ", ".join("?" * len(rows[0]))
        conn.executemany(f"INSERT INTO {table} ({cols}) VALUES ({marks})", rows)
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _clock(stamp: str) -> float:
    h, m, rest = stamp.split(":")
    s, ms, us = rest.split(".")
    return int(h) * 3600 + int(m) * 60 + int(s) + int(ms) / 1e3 + int(us) / 1e6


def push(port: int, files: list[Path], log_config: Path) -> list[float]:
    """Latency (s) of each C-STORE of one storescu association (TCP_NODELAY=1)."""
    env = {**os.environ, "TCP_NODELAY": "1"}
    out = subprocess.run(
        ["/usr/bin/storescu", "-lc", str(log_config), "-aec", "SCREENER", "127.0.0.1",
         str(port), *map(str, files)],
        env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"storescu failed: {out.stderr[-500:]}")
    latencies, sent = [], None
    for line in (out.stdout + out.stderr).splitlines():
        stamp, _, text = line.partition(" ")
        if text.startswith("Sending Store Request"):
            sent = _clock(stamp)
        elif text.startswith("Received Store Response") and sent is not None:
            latencies.append((_clock(stamp) - sent) % 86400)
            sent = None
    if len(latencies) != len(files):
        raise SystemExit(f"{len(latencies)} latencies read for {len(files)} films")
    return latencies


def summary(latencies: list[float]) -> str:
    ms = sorted(1000 * x for x in latencies)
    p95 = ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]
    return (
        f"{len(ms):>7}{statistics.median(ms):>9.1f}{p95:>9.1f}{ms[-1]:>9.1f}"
        f"{'':>3}(ms: n, p50, p95, max)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--films", type=int, default=400)
    parser.add_argument("--pool", type=int, default=6000, help="films for the purge's time")
    parser.add_argument("--batch", type=int, default=500, help="images per purge transaction")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log_config = work / "log.cfg"
        log_config.write_text(LOG_CONFIG)
        run = work / "run"
        run.mkdir()
        t0 = time.perf_counter()
        fill(run, args.images)
        print(f"filled {args.images:,} expired images in {time.perf_counter() - t0:.1f} s")
        films = make_films(20 + args.films + args.pool, work / "films")
        port = free_port()
        env = serve_env(
            run, port, SCREENER_WORKER_ENABLED="false", SCREENER_LOGGING_LEVEL="warning",
            SCREENER_STORAGE_RETENTION_DAYS="30",
        )  # fmt: skip
        log = (run / "serve.log").open("wb")
        serve = subprocess.Popen(
            [sys.executable, "-m", "screener.cli", "serve"], env=env, stdout=log, stderr=log
        )
        try:
            wait_listening(port, serve, f"serve ({run / 'serve.log'})")
            push(port, films[:20], log_config)  # warm-up
            base: list[float] = []
            half = 20 + args.films // 2
            for i in range(20, half, 50):  # associations of 50 films, as below
                base += push(port, films[i : min(i + 50, half)], log_config)
            pool = films[half:]
            purger = subprocess.Popen(
                [sys.executable, "-c", PURGE, str(args.batch)],
                env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            during: list[float] = []
            while purger.poll() is None and len(pool) >= args.films:
                during += push(port, pool[:50], log_config)
                pool = pool[50:]
            if purger.poll() is None:
                print("the purge outlasted --pool films: the rest of it is not sampled")
            out, err = purger.communicate(timeout=1800)
            if purger.returncode != 0:
                raise SystemExit(f"purge failed: {err[-1000:]}")
            for _ in range(0, args.films - args.films // 2, 50):  # the other half after
                base += push(port, pool[:50], log_config)
                pool = pool[50:]
        finally:
            serve.terminate()
            serve.wait(120)
            log.close()
        chosen, purged, seconds = out.strip().splitlines()[-1].split()
        print(f"purge: {purged} of {chosen} images in {float(seconds):.1f} s, batch {args.batch}")
        print(
            f"{'ingest latency, storescu TCP_NODELAY=1':<44}{'n':>7}{'p50':>9}{'p95':>9}{'max':>9}"
        )
        print(f"{'  alone (half before, half after)':<44}{summary(base)}")
        print(f"{'  during the purge':<44}{summary(during)}")


if __name__ == "__main__":
    main()
