"""The worklist at a year's volume: 200,000 scored studies, on SQLite and PostgreSQL.

    .venv/bin/python benchmarks/bench_worklist.py [--studies 200000] [--db sqlite postgresql]

For each database: a fresh one brought to revision 0006 by the real migrations, filled with
Core executemany inserts (studies received over the last 365 days, one image each and two in
every tenth, one result per image, 5% rescored by a newer model, 2% outside the domain, 10%
read), then upgraded to head, which times migration 0007's backfill of the summary. Then it
times ``worklist()`` as the web asks for it (limit 200): unread; ``since=1h&min_prob=0.99``;
all; reviewed; each the median and max of ``--repeat`` calls; and the web page itself
(``GET /worklist`` from a real uvicorn on a free port, a trusted-proxy user header standing in
for a login). With ``--before`` it also times what the worklist did before the summary
(every result read, then filtered, sorted and cut in Python). Goal: /worklist under 0.5 s.

PostgreSQL: a throwaway database made on the server of ``SCREENER_TEST_PG_ADMIN``
(default postgresql://postgres@127.0.0.1:5432/postgres) and dropped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PG_ADMIN = os.environ.get("SCREENER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
AGING = 12.0
BATCH = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def database(kind: str, workdir: Path) -> Iterator[str]:
    """A fresh, empty database URL of ``kind``; a PostgreSQL one is dropped afterwards."""
    if kind == "sqlite":
        yield f"sqlite:///{workdir / 'bench.db'}"
        return
    import psycopg

    name = f"screener_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        yield f"{base}/{name}"
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def fill(db: Any, studies: int, seed: int = 1) -> int:
    """``studies`` scored studies written with Core executemany; returns the images."""
    from sqlalchemy import insert

    from screener.db import Instance, Job, Result, Review, Study

    rng = random.Random(seed)
    now = datetime.now(UTC)
    images = 0
    for start in range(0, studies, BATCH):
        ids = range(start + 1, min(start + BATCH, studies) + 1)
        rows: dict[Any, list[dict[str, Any]]] = {
            m: [] for m in (Study, Instance, Job, Result, Review)
        }
        for sid in ids:
            at = now - timedelta(days=365 * rng.random())
            rows[Study].append(dict(id=sid, study_instance_uid=f"1.2.826.0.1.4242.{sid}",
                                    accession_number=f"A{sid}", study_date="20261201",
                                    modality="CR", created_at=at, updated_at=at))  # fmt: skip
            flags = []
            for image in range(2 if sid % 10 == 0 else 1):
                images += 1
                iid = images
                received = at + timedelta(minutes=image)
                rows[Instance].append(dict(id=iid, study_id=sid, series_instance_uid="1.2.3",
                    sop_instance_uid=f"1.2.826.0.1.4242.{sid}.{image}",
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.1",
                    transfer_syntax_uid="1.2.840.10008.1.2.1", modality="CR", number_of_frames=1,
                    spool_path=f"/spool/{iid}.dcm", content_sha256="0" * 64, size_bytes=1 << 20,
                    source="dicom", receive_count=1, received_at=received,
                    updated_at=received))  # fmt: skip
                rows[Job].append(dict(id=iid, instance_id=iid, state="done", priority=0,
                    attempts=1, created_at=received, updated_at=received))  # fmt: skip
                scorings = [("1.0", "1.2.3.1")]
                if rng.random() < 0.05:
                    scorings.append(("2.0", "1.2.3.2"))  # rescored by a newer model
                for n, (version, uid) in enumerate(scorings):
                    p = rng.betavariate(0.6, 2.0)
                    outside = rng.random() < 0.02
                    scored = received + timedelta(seconds=2 + 86400 * n)
                    rows[Result].append(dict(job_id=iid, instance_id=iid, frame_number=1,
                        probability=p, threshold=0.5, domain_score=1.0,
                        label="outside_domain" if outside else ("pneumonia" if p >= 0.5 else "normal"),
                        model_name="screener-densenet121", model_version=version, model_uid=uid,
                        queued_at=received, started_at=received, scored_at=scored))  # fmt: skip
                flags.append(p >= 0.5 and not outside)
            if rng.random() < 0.10:
                positive = any(flags)
                rows[Review].append(dict(study_id=sid, verdict="agree", model_positive=positive,
                    radiologist_positive=positive, probability=0.5,
                    model_name="screener-densenet121", model_version="1.0", model_uid="1.2.3.1",
                    created_at=at + timedelta(hours=1), reader="dr.bench"))  # fmt: skip
        with db.engine.begin() as conn:
            for model, values in rows.items():
                if values:
                    conn.execute(insert(model.__table__), values)
    return images


def before(db: Any, **filters: Any) -> list[Any]:
    """The worklist as computed before the summary: every result in Python."""
    from screener.db.engine import as_utc
    from screener.views.worklist import _scores

    with db.transaction() as session:
        rows = _scores(session, AGING)
    if filters.get("since") is not None:
        rows = [r for r in rows if r.received_at >= as_utc(filters["since"])]
    status = filters.get("status", "unread")
    if status == "unread":
        rows = [r for r in rows if not r.reviewed]
    elif status == "reviewed":
        rows = [r for r in rows if r.reviewed]
    if filters.get("min_prob") is not None:
        rows = [r for r in rows if r.probability >= filters["min_prob"]]
    rows.sort(key=lambda r: (not r.flagged, -r.priority, r.received_at))
    return rows[: filters.get("limit") or None]


def timed(call: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Median and max seconds of ``repeat`` calls, and the last call's value."""
    seconds, value = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        value = call()
        seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds), max(seconds), value


@contextmanager
def web(db_url: str, workdir: Path) -> Iterator[int]:
    """The web app over ``db_url`` in a real uvicorn on a free port (this thread's neighbour)."""
    import uvicorn

    from screener.config import load_settings
    from screener.db import Database
    from screener.web.app import create_app

    port = free_port()
    config = workdir / "screener.toml"  # defaults, not the checkout's screener.toml
    config.write_text("")
    settings = load_settings(
        config,
        overrides={
            "database.url": db_url,
            "storage.spool_dir": str(workdir / "spool"),
            "web.trusted_user_header": "X-Remote-User",
        },
    )
    db = Database(db_url)
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings, db), host="127.0.0.1", port=port, log_level="error")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(10)
        db.dispose()


def get(port: int, path: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", path, headers={"X-Remote-User": "dr.bench"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
        return len(body)
    finally:
        conn.close()


def bench(kind: str, studies: int, repeat: int, with_before: bool) -> None:
    from screener.db import Database
    from screener.db.migrate import upgrade
    from screener.views.worklist import worklist

    with tempfile.TemporaryDirectory() as tmp, database(kind, Path(tmp)) as url:
        db = Database(url)
        try:
            upgrade(db, "0006")
            t0 = time.perf_counter()
            images = fill(db, studies)
            filled = time.perf_counter() - t0
            t0 = time.perf_counter()
            upgrade(db)
            backfill = time.perf_counter() - t0
            print(f"{kind}: {studies:,} studies, {images:,} images inserted in {filled:.1f} s; "
                  f"upgrade to head (0007 backfills the summary) {backfill:.1f} s")  # fmt: skip
            hour_ago = datetime.now(UTC) - timedelta(hours=1)
            cases: dict[str, dict[str, Any]] = {
                "unread (the /worklist default)": dict(status="unread"),
                "since=1h&min_prob=0.99": dict(status="unread", since=hour_ago, min_prob=0.99),
                "status=all": dict(status="all"),
                "status=reviewed": dict(status="reviewed"),
            }
            for name, filters in cases.items():
                median, worst, rows = timed(
                    partial(worklist, db, aging_hours=AGING, limit=200, **filters), repeat
                )
                line = f"  worklist {name:<32} {len(rows):>4} rows  median {median * 1000:7.1f} ms  max {worst * 1000:7.1f} ms"
                if with_before and name in (
                    "unread (the /worklist default)",
                    "since=1h&min_prob=0.99",
                ):
                    try:
                        seconds, _worst, old = timed(partial(before, db, limit=200, **filters), 1)
                    except Exception as exc:  # PostgreSQL: 200,000 bound parameters in one IN
                        line += f"  (before: failed: {str(exc.__cause__ or exc)[:80]})"
                    else:
                        same = [r.study_id for r in old] == [r.study_id for r in rows]
                        line += f"  (before: {seconds:.2f} s, same rows: {same})"
                print(line)
            with web(url, Path(tmp)) as port:
                for path in ("/worklist", "/worklist?since=1h&min_prob=0.99"):
                    median, worst, size = timed(partial(get, port, path), repeat)
                    print(
                        f"  GET {path:<36} {size:>7} bytes  median {median * 1000:7.1f} ms  max {worst * 1000:7.1f} ms"
                    )
        finally:
            db.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--db", nargs="+", choices=["sqlite", "postgresql"],
                        default=["sqlite", "postgresql"])  # fmt: skip
    parser.add_argument("--before", action="store_true",
                        help="also time the worklist as computed before the summary (slow)")  # fmt: skip
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()} cores")
    for kind in args.db:
        bench(kind, args.studies, args.repeat, args.before)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
