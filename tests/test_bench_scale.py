"""benchmarks/bench_scale.py at a tiny size: its fill writes the rows asked for and keeps the
worklist's summary as the summary's own refresh would, and every path it times answers
without an error, on SQLite and PostgreSQL. The timings themselves are not checked."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from sqlalchemy import text
from support import PG_ADMIN_URL, fresh_pg_database

from screener.db import Database, summary

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "bench_scale.py"
RESULTS, REVIEWS, AUDIT_EVENTS = 2000, 100, 400


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    """The benchmark script as a module."""
    spec = importlib.util.spec_from_file_location("bench_scale", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_scale"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def empty_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """A second database of the same kind as ``db_url``, for the dequeue's baseline."""
    if db_url.startswith("sqlite"):
        yield f"sqlite:///{tmp_path / 'empty.db'}"
        return
    url, drop = fresh_pg_database(PG_ADMIN_URL)
    try:
        yield url
    finally:
        drop()


def _rows(url: str, sql: str) -> list[tuple[Any, ...]]:
    db = Database(url)
    try:
        with db.engine.connect() as conn:
            return [tuple(row) for row in conn.execute(text(sql)).all()]
    finally:
        db.dispose()


def test_fill_writes_the_rows_asked_for(bench: ModuleType, db_url: str) -> None:
    """The database holds the results, reads, audit rows and finished jobs asked for, 100
    queued jobs, exports in every state, and some flagged and some outside the domain."""
    written = bench.fill(db_url, RESULTS, REVIEWS, AUDIT_EVENTS, quiet=True)
    counts = bench.row_counts(db_url)
    assert counts == written
    assert (counts["results"], counts["reviews"], counts["audit_events"]) == (
        RESULTS,
        REVIEWS,
        AUDIT_EVENTS,
    )
    assert counts["study_scores"] == counts["audit_draws"] == counts["studies"] - 100
    jobs = dict(_rows(db_url, "SELECT state, COUNT(*) FROM jobs GROUP BY state"))
    assert jobs["queued"] == 100
    assert sum(n for state, n in jobs.items() if state != "queued") == RESULTS
    assert {s for (s,) in _rows(db_url, "SELECT DISTINCT state FROM exports")} == {
        "delivered",
        "pending",
        "dead",
        "shadow",
    }
    (flagged,) = _rows(db_url, "SELECT COUNT(*) FROM study_scores WHERE flagged")[0]
    assert 0 < flagged < counts["study_scores"] // 5
    assert _rows(db_url, "SELECT COUNT(*) FROM results WHERE label = 'outside_domain'")[0][0]


def test_fill_is_counted_by_the_kept_counts(bench: ModuleType, db_url: str) -> None:
    """The bulk fill (executemany on SQLite, COPY on PostgreSQL) goes through migration
    0016's triggers: the kept counts equal a recount of the rows."""
    from screener.db.tallies import read_tallies, recount

    bench.fill(db_url, RESULTS, REVIEWS, AUDIT_EVENTS, quiet=True)
    db = Database(db_url)
    try:
        with db.transaction() as session:
            kept, counted = read_tallies(session), recount(session)
    finally:
        db.dispose()
    assert kept == counted
    assert kept["jobs", "queued", ""] == 100 and kept["results", "normal", ""] > 0


def test_fill_keeps_the_summary_as_its_refresh_would(bench: ModuleType, db_url: str) -> None:
    """Every study_scores row the fill wrote equals the one summary.refresh computes from the
    same results, images, reads and audit draws."""
    bench.fill(db_url, RESULTS, REVIEWS, AUDIT_EVENTS, quiet=True)
    columns = bench.COLUMNS["study_scores"]
    select = f"SELECT {', '.join(columns)} FROM study_scores ORDER BY study_id"
    written = _rows(db_url, select)
    db = Database(db_url)
    try:
        with db.engine.begin() as conn:
            ids = [int(i) for i in conn.execute(text("SELECT id FROM studies")).scalars()]
            summary.refresh(conn, ids)
    finally:
        db.dispose()
    refreshed = _rows(db_url, select)
    assert len(written) == len(refreshed) > 0
    for ours, theirs in zip(written, refreshed, strict=True):
        for name, a, b in zip(columns, ours, theirs, strict=True):
            if isinstance(a, float) and isinstance(b, float):
                assert a == pytest.approx(b, abs=1e-3), (ours[0], name)
            else:
                assert a == b, (ours[0], name, a, b)


def test_every_path_answers(bench: ModuleType, db_url: str, empty_url: str, tmp_path: Path) -> None:
    """Each timed path returns without an error over a filled database (the web's pages
    with 200), once repeated."""
    bench.fill(db_url, RESULTS, REVIEWS, AUDIT_EVENTS, quiet=True)
    bench.fill(empty_url, 0, 0, 0, quiet=True)
    timings = bench.time_paths(db_url, empty_url, tmp_path, repeat=1, quiet=True)
    assert [t.path for t in timings] == [
        "worklist (unread)",
        "worklist --since 1h",
        "worklist --min-prob 0.99",
        "worklist --status reviewed",
        "show (one study)",
        "status --json",
        "stats (review_stats)",
        "stats pictures (review_curves)",
        "/metrics scrape",
        "/readyz",
        "dequeue (done jobs + 100 queued)",
        "dequeue (100 queued alone)",
        "commission (site_reads)",
        "commission figures (the page)",
        "GET /worklist",
        "GET /worklist?since=1h&min_prob=0.99",
        "GET /study/N",
        "GET /status",
        "GET /stats",
        "GET /stats/UID/roc.png",
    ]
    assert [(t.path, t.status) for t in timings if t.status != "ok"] == []
    details = {t.path: t.detail for t in timings}
    assert details["worklist (unread)"] == "50 rows"
    assert details["/readyz"] == "ready"
    assert details["dequeue (done jobs + 100 queued)"] == "32 jobs leased"
    assert details["dequeue (100 queued alone)"] == "32 jobs leased"
    assert details["stats (review_stats)"].endswith(f"{REVIEWS} reads")
    # the dequeue's leases were put back: the 100 are queued again
    assert _rows(db_url, "SELECT COUNT(*) FROM jobs WHERE state = 'queued'")[0][0] == 100


def test_keep_then_reuse(tmp_path: Path) -> None:
    """The command keeps a SQLite fill with --keep and times it again with --reuse, writing
    both runs' row counts and timings as JSON and leaving RESULTS.md alone."""
    state = tmp_path / "state.json"
    common = [sys.executable, str(SCRIPT), "--db", "sqlite", "--repeat", "1", "--no-record"]
    before = (REPO / "benchmarks" / "RESULTS.md").read_text()
    first = tmp_path / "first.json"
    subprocess.run(
        [*common, "--results", "300", "--keep", "--state", str(state), "--json-out", str(first)],
        check=True,
        timeout=300,
        capture_output=True,
    )
    kept = json.loads(state.read_text())
    assert kept["results"] == 300
    assert Path(kept["urls"]["sqlite"]["full"].split("///", 1)[1]).parent == tmp_path
    second = tmp_path / "second.json"
    subprocess.run(
        [
            *common,
            "--reuse",
            "--state",
            str(state),
            "--only",
            "worklist",
            "--json-out",
            str(second),
        ],
        check=True,
        timeout=300,
        capture_output=True,
    )
    reused = json.loads(second.read_text())
    assert reused["counts"]["sqlite"]["results"] == 300
    assert [t["status"] for t in reused["timings"]["sqlite"]] == ["ok"] * 6  # 4 + 2 pages
    assert json.loads(first.read_text())["counts"] == reused["counts"]
    assert (REPO / "benchmarks" / "RESULTS.md").read_text() == before
