"""Each read path of issue 24 (a year of a hospital) is served by an index on PostgreSQL:
its statements, captured as the views issue them over a small year filled by
benchmarks/bench_scale.py, are EXPLAINed with sequential scans priced out
(``enable_seqscan = off``), so a ``Seq Scan`` left on a large table means no index serves
that statement's filter or order. Plans only: nothing here is timed."""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event

from screener.db import Database

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "bench_scale.py"

#: the tables a year makes large (hundreds of thousands of rows and more)
LARGE = {
    "studies",
    "instances",
    "jobs",
    "results",
    "exports",
    "reviews",
    "study_scores",
    "audit_draws",
}

pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def year(postgres_admin: str) -> Iterator[Database]:
    """A PostgreSQL database holding a small year (2,000 results) from the benchmark's fill."""
    from support import fresh_pg_database

    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    bench = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = bench
    spec.loader.exec_module(bench)
    url, drop = fresh_pg_database(postgres_admin)
    try:
        bench.fill(url, 2000, 100, 400, quiet=True)
        db = Database(url)
        try:
            yield db
        finally:
            db.dispose()
    finally:
        drop()


def _captured(db: Database, call: Callable[[], object]) -> list[tuple[str, Any]]:
    """The SELECT statements (and their parameters) ``call`` sends to ``db``."""
    seen: list[tuple[str, Any]] = []

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            seen.append((statement, parameters))

    event.listen(db.engine, "before_cursor_execute", record)
    try:
        call()
    finally:
        event.remove(db.engine, "before_cursor_execute", record)
    return seen


def _scans(node: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(node type, table) of every scan in a JSON plan."""
    if "Relation Name" in node:
        yield node["Node Type"], node["Relation Name"]
    for child in node.get("Plans", []):
        yield from _scans(child)


def _seq_scans(db: Database, statements: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    """(table, the statement's start) of every Seq Scan on a large table in their plans."""
    found = []
    raw = db.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("SET enable_seqscan = off")
        for statement, parameters in statements:
            cursor.execute("EXPLAIN (FORMAT JSON) " + statement, parameters)
            row = cursor.fetchone()
            assert row is not None
            plan = row[0]
            plan = plan if isinstance(plan, list) else json.loads(plan)
            for kind, table in _scans(plan[0]["Plan"]):
                if kind == "Seq Scan" and table in LARGE:
                    found.append((table, " ".join(statement.split())[:120]))
        raw.rollback()
    finally:
        raw.close()
    return found


def _paths(db: Database) -> dict[str, Callable[[], object]]:
    from screener.report.ledger import export_counts
    from screener.views.commissioning import site_reads
    from screener.views.status import build_report
    from screener.views.worklist import latest_reads, review_stats, worklist
    from screener.work import queue

    meta = {
        "uid": "1.2.826.0.1.4242.9.2",
        "name": "screener-densenet121",
        "version": "2.0",
        "derived_from": {"uid": "1.2.826.0.1.4242.9.1"},
    }
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    return {
        "worklist (unread)": lambda: worklist(db, aging_hours=12.0, status="unread"),
        "worklist --since 1h": lambda: worklist(db, aging_hours=12.0, since=hour_ago),
        "worklist --min-prob 0.99": lambda: worklist(db, aging_hours=12.0, min_prob=0.99),
        "worklist --status reviewed": lambda: worklist(db, aging_hours=12.0, status="reviewed"),
        "stats (review_stats)": lambda: review_stats(db),
        "stats pictures (latest_reads)": lambda: latest_reads(db),
        "commission (site_reads)": lambda: site_reads(db, meta, 12.0),
        "jobs by state": lambda: queue.counts_by_state(db),
        "exports by state": lambda: export_counts(db),
        "status (build_report, the kept counts)": lambda: build_report(db),
    }


@pytest.mark.parametrize(
    "path",
    [
        "worklist (unread)",
        "worklist --since 1h",
        "worklist --min-prob 0.99",
        "worklist --status reviewed",
        "stats (review_stats)",
        "stats pictures (latest_reads)",
        "commission (site_reads)",
        "jobs by state",
        "exports by state",
        "status (build_report, the kept counts)",
    ],
)
def test_the_path_uses_an_index(year: Database, path: str) -> None:
    """No statement of the path needs a sequential scan of a large table."""
    statements = _captured(year, _paths(year)[path])
    assert statements, f"{path} issued no SELECT"
    assert _seq_scans(year, statements) == []


def test_the_check_sees_a_sequential_scan(year: Database) -> None:
    """A filter no index serves (the results' scored_at) is reported: the check can fail."""
    from sqlalchemy import select

    from screener.db import Result

    def unindexed() -> None:
        with year.transaction() as session:
            session.execute(select(Result.id).where(Result.scored_at < datetime.now(UTC)))

    found = _seq_scans(year, _captured(year, unindexed))
    assert [table for table, _ in found] == ["results"]
