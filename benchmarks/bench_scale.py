"""A year of a hospital: every read path timed on SQLite and PostgreSQL holding a year's data.

    .venv/bin/python benchmarks/bench_scale.py [--results 1000000] [--db sqlite|postgres|both]
        [--keep | --reuse] [--only PATH] [--repeat 20] [--no-record]

Fill (not through the daemon): each database is created (a SQLite file; a fresh PostgreSQL
database on the server of ``SCREENER_TEST_PG_ADMIN``, default
postgresql://postgres@127.0.0.1:5432/postgres), brought to head by the project's Alembic
upgrade (``screener.db.migrate.upgrade``), then filled by the fastest bulk path each offers:
``executemany`` on one sqlite3 connection (``synchronous=OFF`` for the fill only), ``COPY``
on PostgreSQL (then ``VACUUM ANALYZE``, as autovacuum would, and the id sequences moved past
the rows). ``--results N`` results (default 1,000,000) over 365 days:

- studies of one image, every tenth of two; one ``done`` job per image; one result per
  image, 5 % rescored by a newer model (its second result is the latest); about 3.5 % of the
  studies flagged, 2 % of results outside the domain;
- ``study_scores`` (:mod:`screener.db.summary`) computed here from the same rows by the same
  rules as its refresh statement (the test checks the two agree) and an ``audit_draws`` row
  per scored study (share 0.05);
- ``--reviews`` reads (default 5 % of the results: 50,000): flagged studies, audit studies
  and a few undrawn unflagged ones; 1 % of them read a flag the study no longer has (reopened);
- one export per result in every state (delivered, pending, dead, shadow);
- finished jobs without a result (skipped, rejected, failed) so that finished jobs number
  ``--results``, plus 100 queued jobs of 100 new, unscored studies;
- ``--audit-events`` audit rows (default a fifth of the results).

A second, small database per kind holds only the 100 queued jobs: the dequeue's baseline.

Then each read path a user or a scraper hits, called as the CLI and the web call it: the
worklist (unread; ``--since 1h``; ``--min-prob 0.99``; ``--status reviewed``), ``show`` of one
study, ``status`` (``screener status --json``), ``stats`` (agreement and weighted figures),
the stats page's pictures' data (``review_curves``), the ``/metrics`` scrape, ``/readyz``'s
check, the worker's dequeue (1M done jobs beside 100 queued, and the 100 alone) and
``screener commission``'s reads and its figures (what the /commission page computes: the
reads, then the candidate thresholds and their bootstraps); and the web's pages over HTTP from a real uvicorn (a
trusted-proxy user header standing in for a login): /worklist (default and
``since=1h&min_prob=0.99``), /study/N, /status, /stats and its ROC picture. Each path is first called once in a forked child: past
``--limit`` seconds (30) it is killed and recorded as "> 30 s". Otherwise one warm-up, then
``--repeat`` calls (stopping early when they pass ``--budget`` seconds, at least 3), p50 and
p95. The table is printed and, unless ``--no-record``, appended to benchmarks/RESULTS.md.

``--keep`` keeps the filled databases (SQLite files beside the state file, by default
var/bench-scale/state.json, which names them and the PostgreSQL ones); ``--reuse`` times them
again without a fill (drop the PostgreSQL ones by hand when done: their names are there).

Issue 24's write paths are timed elsewhere: purge of 50,000 expired images while storescu
pushes (``bench_purge.py``), a rescan's C-FIND answer of 100,000 studies from a test SCP
(``bench_rescan_find.py``), ingest on 1 and 2 listener processes against 1, 2 and 4 senders
(``bench_ingest.py --processes``).
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PG_ADMIN = os.environ.get("SCREENER_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
STATE_DIR = REPO / "var" / "bench-scale"
RESULTS_MD = REPO / "benchmarks" / "RESULTS.md"
HEADING = "## A year of a hospital (bench_scale.py)"

AGING_HOURS = 12.0
YEAR = 365 * 86400.0
QUEUED = 100
AUDIT_SHARE = 0.05
BATCH_STUDIES = 20_000
MODEL_NAME = "screener-densenet121"
MODELS = (("1.0", "1.2.826.0.1.4242.9.1", 0.5), ("2.0", "1.2.826.0.1.4242.9.2", 0.45))
READERS = ("dr.ames", "dr.brook", "dr.chen", "dr.diaz", "dr.eze")
UID_ROOT = "1.2.826.0.1.4242"

#: Columns written per table, in the order of the rows built below.
COLUMNS: dict[str, tuple[str, ...]] = {
    "studies": ("id", "study_instance_uid", "accession_number", "study_date", "study_time",
                "modality", "created_at", "updated_at"),
    "instances": ("id", "study_id", "series_instance_uid", "sop_instance_uid", "sop_class_uid",
                  "transfer_syntax_uid", "modality", "view_position", "rows", "columns",
                  "number_of_frames", "bits_stored", "photometric_interpretation",
                  "spool_path", "content_sha256", "size_bytes", "source", "calling_ae_title",
                  "receive_count", "received_at", "updated_at"),
    "jobs": ("id", "instance_id", "state", "priority", "attempts", "reason", "last_error",
             "created_at", "started_at", "finished_at", "updated_at"),
    "results": ("id", "job_id", "instance_id", "frame_number", "probability", "label",
                "threshold", "domain_score", "model_name", "model_version", "model_uid",
                "queued_at", "started_at", "scored_at", "reported_at"),
    "exports": ("id", "result_id", "destination", "state", "attempts", "last_error",
                "next_attempt_at", "sr_sop_instance_uid", "created_at", "delivered_at",
                "payload"),
    "reviews": ("id", "study_id", "verdict", "model_positive", "radiologist_positive",
                "finding", "probability", "model_name", "model_version", "model_uid",
                "created_at", "reader"),
    "audit_draws": ("study_id", "u", "share", "drawn_at"),
    "study_scores": ("study_id", "probability", "flagged", "threshold", "model_name",
                     "model_version", "model_uid", "assessment", "images",
                     "top_sop_instance_uid", "received_at", "received_epoch", "reviewed",
                     "reopened", "verdict", "reader", "read_at", "audit"),
    "audit_events": ("id", "at", "event", "reason", "message", "sop_instance_uid",
                     "study_instance_uid", "job_id", "calling_ae_title"),
}  # fmt: skip

#: Tables whose integer ``id`` PostgreSQL's sequence must be moved past after COPY.
SEQUENCED = ("studies", "instances", "jobs", "results", "exports", "reviews", "audit_events")

AUDIT_EVENTS = (
    ("duplicate_ignored", None, 0.40),
    ("spool_purged", "retention", 0.30),
    ("store_refused", "sop_class_not_accepted", 0.10),
    ("job_failed", "decode_error", 0.08),
    ("association_rejected", "calling_ae_not_allowed", 0.06),
    ("lease_expired", "requeued", 0.05),
    ("process_restarted", "worker", 0.01),
)
FINISHED_WITHOUT_RESULT = (
    ("skipped", "population:age", 0.35),
    ("skipped", "selection:body_part", 0.25),
    ("rejected", "not_dicom", 0.15),
    ("rejected", "no_pixel_data", 0.10),
    ("failed", "decode_error", 0.15),
)


# ---------------------------------------------------------------------------------------
# the plan: every random draw, made once with numpy


def stamps(epochs: np.ndarray) -> list[str]:
    """UTC seconds as SQLAlchemy stores a DateTime in SQLite (and COPY reads in UTC)."""
    if len(epochs) == 0:
        return []
    micro = np.round(epochs * 1e6).astype("datetime64[us]")
    text = np.datetime_as_string(micro, unit="us")
    return [s.replace("T", " ") for s in text.tolist()]


@dataclass
class Plan:
    """A year's rows as arrays; the fill turns them into rows batch by batch."""

    now: float
    studies: int
    study_at: np.ndarray  # epoch seconds of the first image
    images: np.ndarray  # per study
    first_instance: np.ndarray  # per study: index of its first instance
    inst_study: np.ndarray  # per instance
    inst_at: np.ndarray
    rescored: np.ndarray  # per instance: a second, newer result
    first_result: np.ndarray  # per instance: index of its first result
    res_inst: np.ndarray  # per result
    res_p: np.ndarray
    res_outside: np.ndarray
    res_model: np.ndarray  # 0 or 1: MODELS index
    res_at: np.ndarray
    res_latest: np.ndarray
    flagged: np.ndarray  # per study
    assessed: np.ndarray  # per study: latest results inside the domain
    u: np.ndarray  # per study: the audit draw
    review_of: dict[int, int]  # study index -> review index
    review_rows: list[tuple[Any, ...]]
    finished_extra: int
    audit_events: int

    @property
    def instances(self) -> int:
        return len(self.inst_study)

    @property
    def results(self) -> int:
        return len(self.res_inst)


def plan(results: int, reviews: int, audit_events: int, seed: int = 24) -> Plan:
    """Draw a year of ``results`` results over studies of one or two images."""
    rng = np.random.default_rng(seed)
    now = round(time.time(), 6)
    guess = max(1, math.ceil(results / 1.155 * 1.02) + 100)
    images = np.where(np.arange(1, guess + 1) % 10 == 0, 2, 1)
    inst_study = np.repeat(np.arange(guess), images)
    rescored = rng.random(len(inst_study)) < 0.05
    cum = np.cumsum(1 + rescored.astype(np.int64))
    kept = int(np.searchsorted(cum, results, side="right"))  # instances whose results fit
    if results and (kept == 0 or cum[kept - 1] < results):
        rescored[kept] = False  # the next instance adds its one result
        kept += 1
    inst_study, rescored = inst_study[:kept], rescored[:kept]
    studies = int(inst_study[-1]) + 1 if kept else 0
    images = np.bincount(inst_study, minlength=studies).astype(np.int64)
    first_instance = np.concatenate([[0], np.cumsum(images)[:-1]]).astype(np.int64)
    study_at = np.round(now - rng.uniform(300.0, YEAR, studies), 6)
    image_no = np.arange(kept) - first_instance[inst_study] if kept else np.zeros(0, np.int64)
    inst_at = study_at[inst_study] + 60.0 * image_no
    per_inst = 1 + rescored.astype(np.int64)
    first_result = np.concatenate([[0], np.cumsum(per_inst)[:-1]]).astype(np.int64)
    res_inst = np.repeat(np.arange(kept), per_inst)
    second = np.arange(len(res_inst)) - first_result[res_inst] if kept else np.zeros(0, np.int64)
    positive = rng.random(studies) < 0.035  # studies with pneumonia: high P
    pos_r = positive[inst_study[res_inst]] if kept else np.zeros(0, bool)
    res_p = np.where(pos_r, rng.beta(4.0, 1.2, len(res_inst)), rng.beta(0.5, 8.0, len(res_inst)))
    res_outside = rng.random(len(res_inst)) < 0.02
    res_model = second.astype(np.int64)  # a rescore is by the newer model
    res_at = np.minimum(inst_at[res_inst] + 2.0 + 86400.0 * second, now - 1.0)
    res_latest = second == per_inst[res_inst] - 1
    thresholds = np.array([m[2] for m in MODELS])
    hit = res_latest & ~res_outside & (res_p >= thresholds[res_model])
    res_study = inst_study[res_inst]
    flagged = np.zeros(studies, bool)
    np.logical_or.at(flagged, res_study[hit], True)
    assessed = np.bincount(res_study[res_latest & ~res_outside], minlength=studies)
    u = rng.random(studies)
    audit = ~flagged & (assessed > 0) & (u < AUDIT_SHARE)
    # reads: the flagged first (up to 45 %), audit studies (45 %), the rest of any kind
    reviews = min(reviews, studies)
    chosen: list[np.ndarray] = []
    taken = np.zeros(studies, bool)
    for pool, share in ((flagged, 0.45), (audit, 0.45), (np.ones(studies, bool), 1.0)):
        ids = np.flatnonzero(pool & ~taken)
        left = reviews - sum(len(c) for c in chosen)
        pick = rng.choice(ids, size=min(len(ids), left, math.ceil(share * reviews)), replace=False)
        taken[pick] = True
        chosen.append(pick)
    read = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)
    review_rows, review_of = _reads(rng, read, flagged, audit, study_at, now)
    return Plan(
        now, studies, study_at, images, first_instance, inst_study, inst_at, rescored,
        first_result, res_inst, res_p, res_outside, res_model, res_at, res_latest, flagged,
        assessed, u, review_of, review_rows, max(0, results - kept), audit_events,
    )  # fmt: skip


def _reads(
    rng: np.random.Generator,
    read: np.ndarray,
    flagged: np.ndarray,
    audit: np.ndarray,
    study_at: np.ndarray,
    now: float,
) -> tuple[list[tuple[Any, ...]], dict[int, int]]:
    """(model_positive, radiologist_positive, created_at epoch, reader) per read study."""
    n = len(read)
    flips = rng.random(n) < 0.01  # read a flag the study no longer has: reopened
    model_positive = flagged[read] ^ flips
    chance = np.where(flagged[read], 0.7, np.where(audit[read], 0.05, 0.1))
    radiologist = rng.random(n) < chance
    unsure = rng.random(n) < 0.02
    at = np.minimum(study_at[read] + rng.uniform(1800.0, 172800.0, n), now - 1.0)
    readers = rng.integers(0, len(READERS), n)
    rows = [
        (bool(model_positive[k]), None if unsure[k] else bool(radiologist[k]), float(at[k]),
         READERS[int(readers[k])])
        for k in range(n)
    ]  # fmt: skip
    return rows, {int(s): k for k, s in enumerate(read.tolist())}


# ---------------------------------------------------------------------------------------
# rows, batch by batch


def _pick(
    rng: np.random.Generator, table: Sequence[tuple[str, str | None, float]], n: int
) -> np.ndarray:
    weights = np.array([w for *_, w in table])
    return rng.choice(len(table), size=n, p=weights / weights.sum())


def rows_of(p: Plan, lo: int, hi: int) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """(table, rows) of studies ``lo``..``hi`` (indexes) with all they hold."""
    studies, instances, jobs, results, exports = [], [], [], [], []
    reviews, draws, scores = [], [], []
    i_lo, i_hi = int(p.first_instance[lo]), int(p.first_instance[hi - 1] + p.images[hi - 1])
    r_lo = int(p.first_result[i_lo])
    r_hi = int(p.first_result[i_hi - 1] + 1 + p.rescored[i_hi - 1])
    s_at, i_at, r_at = (
        stamps(p.study_at[lo:hi]),
        stamps(p.inst_at[i_lo:i_hi]),
        stamps(p.res_at[r_lo:r_hi]),
    )
    for s in range(lo, hi):
        sid = s + 1
        uid = f"{UID_ROOT}.{sid}"
        at = s_at[s - lo]
        studies.append((sid, uid, f"A{sid:08d}", at[:10].replace("-", ""), at[11:19].replace(":", ""), "CR", at, at))  # fmt: skip
        latest: list[int] = []  # result indexes
        for i in range(int(p.first_instance[s]), int(p.first_instance[s] + p.images[s])):
            iid = i + 1
            received = i_at[i - i_lo]
            sop = f"{uid}.1.{iid}"
            instances.append((iid, sid, f"{uid}.1", sop, "1.2.840.10008.5.1.4.1.1.1",
                "1.2.840.10008.1.2.4.50", "CR", "PA", 2048, 2048, 1, 12, "MONOCHROME2",
                f"/var/lib/screener/spool/{iid % 256:02x}/{iid}.dcm", f"{iid:064x}",
                4_000_000, "dicom", "MODALITY1", 1, received, received))  # fmt: skip
            jobs.append((iid, iid, "done", 0, 1, None, None, received, received, received, received))  # fmt: skip
            first = int(p.first_result[i])
            for r in range(first, first + 1 + int(p.rescored[i])):
                version, model_uid, threshold = MODELS[int(p.res_model[r])]
                outside = bool(p.res_outside[r])
                prob = float(p.res_p[r])
                label = "outside_domain" if outside else ("pneumonia" if prob >= threshold else "normal")  # fmt: skip
                scored = r_at[r - r_lo]
                results.append((r + 1, iid, iid, 1, prob, label, threshold,
                    41.0 if outside else 3.5, MODEL_NAME, version, model_uid, received,
                    scored, scored, scored))  # fmt: skip
                exports.append(_export(p, r, scored))
                if p.res_latest[r]:
                    latest.append(r)
        draws.append((sid, float(p.u[s]), AUDIT_SHARE, r_at[int(p.first_result[p.first_instance[s]]) - r_lo]))  # fmt: skip
        review = p.review_of.get(s)
        if review is not None:
            reviews.append(_review(p, s, review, latest))
        scores.append(_score_row(p, s, latest, at, review, results, r_lo))
    yield "studies", studies
    yield "instances", instances
    yield "jobs", jobs
    yield "results", results
    yield "exports", exports
    yield "reviews", reviews
    yield "audit_draws", draws
    yield "study_scores", scores


def _top(p: Plan, latest: list[int]) -> int:
    """The result that sets a study's score (summary.REFRESH_SQL's ``place = 1``)."""
    inside = [r for r in latest if not p.res_outside[r]]
    return max(inside or latest, key=lambda r: (p.res_p[r], -p.res_at[r], -r))


def _review(p: Plan, s: int, k: int, latest: list[int]) -> tuple[Any, ...]:
    model_positive, radiologist, at, reader = p.review_rows[k]
    top = _top(p, latest)
    version, model_uid, _ = MODELS[int(p.res_model[top])]
    if radiologist is None:
        verdict, finding = "indeterminate", "cannot_tell"
    else:
        verdict = "agree" if radiologist == model_positive else "disagree"
        finding = "pneumonia" if radiologist else "no_pneumonia"
    return (k + 1, s + 1, verdict, model_positive, radiologist, finding, float(p.res_p[top]),
            MODEL_NAME, version, model_uid, stamps(np.array([at]))[0], reader)  # fmt: skip


def _score_row(
    p: Plan, s: int, latest: list[int], at: str, review: int | None, results: list[Any], r_lo: int
) -> tuple[Any, ...]:
    top = _top(p, latest)
    version, model_uid, threshold = MODELS[int(p.res_model[top])]
    flagged = bool(p.flagged[s])
    inside = int(p.assessed[s])
    assessment = (
        "assessed" if inside == len(latest) else "partly_outside_domain" if inside else "outside_domain"
    )  # fmt: skip
    inst = int(p.res_inst[top])
    sop = f"{UID_ROOT}.{s + 1}.1.{inst + 1}"
    verdict = reader = read_at = None
    reviewed = reopened = False
    if review is not None:
        model_positive, _, read_epoch, reader = p.review_rows[review]
        reviewed, reopened = model_positive == flagged, model_positive != flagged
        verdict = _review(p, s, review, latest)[2]
        read_at = stamps(np.array([read_epoch]))[0]
    audit = not flagged and inside > 0 and p.u[s] < AUDIT_SHARE
    return (s + 1, float(p.res_p[top]), flagged, threshold, MODEL_NAME, version, model_uid,
            assessment, int(p.images[s]), sop, at, float(p.study_at[s]), reviewed, reopened,
            verdict, reader, read_at, bool(audit))  # fmt: skip


def _export(p: Plan, r: int, scored: str) -> tuple[Any, ...]:
    """One SR delivery per result: every state appears in the first four, then by age."""
    age = p.now - float(p.res_at[r])
    state = ("delivered", "pending", "dead", "shadow")[r] if r < 4 else (
        "shadow" if age > YEAR - 20 * 86400 else "pending" if age < 600 or r % 997 == 0
        else "dead" if r % 211 == 0 else "delivered")  # fmt: skip
    sr = f"{UID_ROOT}.7.{r + 1}" if state != "pending" else None
    error = "association rejected by PACS" if state == "dead" else None
    attempts = {"delivered": 1, "pending": 0, "dead": 8, "shadow": 0}[state]
    delivered = scored if state == "delivered" else None
    return (r + 1, r + 1, "PACS", state, attempts, error, None, sr, scored, delivered, "result")


def tail_rows(p: Plan, seed: int = 25) -> Iterator[tuple[str, list[tuple[Any, ...]]]]:
    """Finished jobs without a result, the 100 queued (new studies), and the audit rows."""
    rng = np.random.default_rng(seed)
    job_id = p.instances
    kinds = _pick(rng, FINISHED_WITHOUT_RESULT, p.finished_extra)
    at = stamps(np.round(p.now - rng.uniform(60.0, YEAR, p.finished_extra), 6))
    jobs = []
    for k in range(p.finished_extra):
        job_id += 1
        state, reason, _ = FINISHED_WITHOUT_RESULT[int(kinds[k])]
        jobs.append((job_id, None, state, 0, 1, reason, f"{state}: {reason}", at[k], at[k], at[k], at[k]))  # fmt: skip
    yield "jobs", jobs
    studies, instances, queued = [], [], []
    q_at = stamps(np.round(p.now - np.linspace(600.0, 60.0, QUEUED), 6))
    for k in range(QUEUED):
        sid, iid = p.studies + k + 1, p.instances + k + 1
        job_id += 1
        uid = f"{UID_ROOT}.{sid}"
        studies.append((sid, uid, f"A{sid:08d}", "20261206", "080000", "CR", q_at[k], q_at[k]))
        instances.append((iid, sid, f"{uid}.1", f"{uid}.1.{iid}", "1.2.840.10008.5.1.4.1.1.1",
            "1.2.840.10008.1.2.4.50", "CR", "PA", 2048, 2048, 1, 12, "MONOCHROME2",
            f"/var/lib/screener/spool/{iid % 256:02x}/{iid}.dcm", f"{iid:064x}", 4_000_000,
            "dicom", "MODALITY1", 1, q_at[k], q_at[k]))  # fmt: skip
        queued.append((job_id, iid, "queued", 0, 0, None, None, q_at[k], None, None, q_at[k]))
    yield "studies", studies
    yield "instances", instances
    yield "jobs", queued
    for lo in range(0, p.audit_events, 100_000):
        n = min(100_000, p.audit_events - lo)
        kinds = _pick(rng, AUDIT_EVENTS, n)
        at = stamps(np.sort(np.round(p.now - rng.uniform(60.0, YEAR, n), 6)))
        who = rng.integers(1, max(2, p.studies + 1), n)
        rows = []
        for k in range(n):
            event, why, _ = AUDIT_EVENTS[int(kinds[k])]
            sid = int(who[k])
            rows.append((lo + k + 1, at[k], event, why, f"{event} ({why or 'resend'})",
                f"{UID_ROOT}.{sid}.1.{sid}", f"{UID_ROOT}.{sid}", None, "MODALITY1"))  # fmt: skip
        yield "audit_events", rows


# ---------------------------------------------------------------------------------------
# writers: sqlite3 executemany, PostgreSQL COPY


class Writer:
    """Writes rows to one database by its bulk path, counting them."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.counts: dict[str, int] = {}
        self.kind = "sqlite" if url.startswith("sqlite") else "postgresql"
        if self.kind == "sqlite":
            self.conn: Any = sqlite3.connect(url.split("///", 1)[1], isolation_level=None)
            self.conn.execute("PRAGMA synchronous=OFF")
            self.conn.execute("BEGIN")
        else:
            import psycopg

            self.conn = psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://"))
            self.conn.execute("SET TIME ZONE 'UTC'")

    def write(self, table: str, rows: list[tuple[Any, ...]]) -> None:
        if not rows:
            return
        cols = COLUMNS[table]
        names = ", ".join(f'"{c}"' for c in cols)
        if self.kind == "sqlite":
            marks = ", ".join("?" * len(cols))
            self.conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
        else:
            with self.conn.cursor() as cur, cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
        self.counts[table] = self.counts.get(table, 0) + len(rows)

    def commit(self) -> None:
        if self.kind == "sqlite":
            self.conn.execute("COMMIT")
            self.conn.execute("BEGIN")
        else:
            self.conn.commit()

    def finish(self) -> None:
        """Commit; SQLite: checkpoint the WAL; PostgreSQL: sequences past the rows, then
        VACUUM ANALYZE (what autovacuum would have done over the year)."""
        if self.kind == "sqlite":
            self.conn.execute("COMMIT")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.close()
            return
        for table in SEQUENCED:
            self.conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                f"COALESCE((SELECT MAX(id) FROM {table}), 0) + 1, false)"
            )
        self.conn.commit()
        self.conn.autocommit = True
        self.conn.execute("VACUUM ANALYZE")
        self.conn.close()


def fill(
    url: str, results: int, reviews: int, audit_events: int, quiet: bool = False
) -> dict[str, int]:
    """Migrate ``url`` to head and fill it with a year's rows; the rows written per table."""
    from screener.db import Database
    from screener.db.migrate import upgrade

    db = Database(url)
    try:
        upgrade(db)
    finally:
        db.dispose()
    t0 = time.perf_counter()
    p = plan(results, reviews, audit_events)

    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    say(f"  planned {p.studies:,} studies, {p.instances:,} images, {p.results:,} results in {time.perf_counter() - t0:.1f} s")  # fmt: skip
    writer = Writer(url)
    t0 = time.perf_counter()
    last = t0
    for lo in range(0, p.studies, BATCH_STUDIES):
        for table, rows in rows_of(p, lo, min(lo + BATCH_STUDIES, p.studies)):
            writer.write(table, rows)
        writer.commit()
        if time.perf_counter() - last > 10 or lo + BATCH_STUDIES >= p.studies:
            last = time.perf_counter()
            done = sum(writer.counts.values())
            say(f"  {min(lo + BATCH_STUDIES, p.studies):,}/{p.studies:,} studies, "
                f"{done:,} rows, {done / (last - t0):,.0f} rows/s")  # fmt: skip
    for table, rows in tail_rows(p):
        writer.write(table, rows)
        writer.commit()
    done = sum(writer.counts.values())
    say(f"  {done:,} rows written in {time.perf_counter() - t0:.1f} s ({done / max(1e-9, time.perf_counter() - t0):,.0f} rows/s); finishing")  # fmt: skip
    t1 = time.perf_counter()
    writer.finish()
    say(f"  finished ({'VACUUM ANALYZE' if writer.kind == 'postgresql' else 'WAL checkpoint'}) in {time.perf_counter() - t1:.1f} s")  # fmt: skip
    return writer.counts


def row_counts(url: str) -> dict[str, int]:
    """Rows per filled table, as the database counts them."""
    from sqlalchemy import text

    from screener.db import Database

    db = Database(url)
    try:
        with db.engine.connect() as conn:
            return {
                t: int(conn.execute(text(f"SELECT COUNT(*) FROM {t}")).scalar_one())
                for t in COLUMNS
            }
    finally:
        db.dispose()


# ---------------------------------------------------------------------------------------
# databases


def pg_create() -> str:
    import psycopg

    name = f"screener_scale_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base = PG_ADMIN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def pg_drop(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------------------------
# the paths


@dataclass
class Timing:
    """One path on one database: ``ok``, ``slow`` (past the limit once) or ``error``."""

    path: str
    status: str
    first: float | None = None
    p50: float | None = None
    p95: float | None = None
    calls: int = 0
    detail: str = ""


@dataclass
class Path_:
    call: Callable[[], str]  # returns a short account of what it got
    after: Callable[[], None] | None = None  # puts back what the call changed (untimed)


@contextmanager
def web_server(settings: Any, db: Any) -> Iterator[int]:
    """The web app over ``db`` in a real uvicorn on a free port (a thread of this process)."""
    import socket
    import threading

    import uvicorn

    from screener.web.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
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


def get(port: int, path: str, timeout: float) -> str:
    """GET ``path`` as a logged-in user (the trusted-proxy header); its size, or raise."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"X-Remote-User": "dr.bench"})
        response = conn.getresponse()
        body = response.read()
        if response.status != 200:
            raise RuntimeError(f"GET {path}: {response.status} {body[:120]!r}")
        return f"{len(body):,} bytes"
    finally:
        conn.close()


def paths(db: Any, empty: Any, settings: Any, port: int | None = None) -> dict[str, Path_]:
    """Every read path, as the CLI and the web call them, over ``db``; the web's pages too
    when its server listens on ``port``."""
    from datetime import timedelta

    from prometheus_client import generate_latest
    from sqlalchemy import select, text, update

    from screener.db import Job, JobState, Study, StudyScoreRow
    from screener.serve.health import HealthServer, registry_for
    from screener.views.commissioning import figures, site_reads
    from screener.views.status import build_report
    from screener.views.worklist import review_curves, review_stats, study_detail, worklist
    from screener.work import queue

    with db.transaction() as session:  # a read study of two images
        key, short_id = session.execute(
            select(Study.study_instance_uid, Study.id)
            .join(StudyScoreRow, StudyScoreRow.study_id == Study.id)
            .order_by(StudyScoreRow.reviewed.desc(), StudyScoreRow.images.desc(), Study.id)
            .limit(1)
        ).one()

    def listed(since_hours: float | None = None, **filters: Any) -> Callable[[], str]:
        def call() -> str:  # the CLI's defaults: limit 50, aging 12 h
            since = (
                None if since_hours is None else datetime.now(UTC) - timedelta(hours=since_hours)
            )
            rows = worklist(db, aging_hours=AGING_HOURS, limit=50, since=since, **filters)
            return f"{len(rows)} rows"

        return call

    def show() -> str:
        d = study_detail(db, key, AGING_HOURS)
        return f"{len(d.images)} images, {len(d.reviews)} reads"

    def status() -> str:
        report = build_report(db, 10, settings)
        return f"{len(json.dumps(report.as_dict())):,} bytes of JSON"

    def stats() -> str:
        s = review_stats(db)
        return f"{len(s)} models, {sum(m.reviewed for m in s):,} reads"

    def curves() -> str:
        c = review_curves(db, AGING_HOURS)
        return f"{sum(len(labels) for labels, _, _ in c.values()):,} reads"

    registry = registry_for(db, {"name": MODEL_NAME, "version": MODELS[1][0]})

    def scrape() -> str:
        return f"{len(generate_latest(registry)):,} bytes"

    def database_check() -> str | None:  # the daemon's /readyz database check
        with db.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        return None

    health = HealthServer("127.0.0.1", 0, registry, {"database": database_check})
    health.httpd.server_close()  # its checks are what /readyz runs; no HTTP needed

    def ready() -> str:
        failed = health.failed_checks()
        return "ready" if not failed else f"not ready: {failed}"

    def dequeue(on: Any) -> Callable[[], str]:
        return lambda: f"{len(queue.dequeue(on, queue.worker_id(), 32, 300.0, 3))} jobs leased"

    def requeue(on: Any) -> Callable[[], None]:
        def after() -> None:
            with on.transaction() as session:
                session.execute(
                    update(Job)
                    .where(Job.state == JobState.PROCESSING)
                    .values(
                        state=JobState.QUEUED,
                        attempts=0,
                        lease_owner=None,
                        lease_expires_at=None,
                        started_at=None,
                    )
                )

        return after

    meta = {
        "uid": MODELS[1][1],
        "name": MODEL_NAME,
        "version": MODELS[1][0],
        "derived_from": {"uid": MODELS[0][1], "name": MODEL_NAME, "version": MODELS[0][0]},
    }

    def commission() -> str:
        reads = site_reads(db, meta, AGING_HOURS)
        return f"{len(reads.weights):,} reads, {len(reads.assessed):,} assessed"

    def commission_figures() -> str:  # what the /commission page computes: reads, then figures
        reads = site_reads(db, meta, AGING_HOURS)
        c = figures(reads, {**meta, "threshold": MODELS[1][2]}, 0.95, refit=True)
        return f"{len(c.candidates)} thresholds judged over {len(c.labels):,} reads"

    pages: dict[str, Path_] = {}
    if port is not None:
        for page in (
            "/worklist",
            "/worklist?since=1h&min_prob=0.99",
            f"/study/{short_id}",
            "/status",
            "/stats",
            f"/stats/{MODELS[0][1]}/roc.png",
        ):
            name = "GET " + page.replace(f"/{short_id}", "/N").replace(MODELS[0][1], "UID")
            pages[name] = Path_(lambda page=page: get(port, page, 120.0))  # type: ignore[misc]
    return {
        "worklist (unread)": Path_(listed(status="unread")),
        "worklist --since 1h": Path_(listed(status="unread", since_hours=1)),
        "worklist --min-prob 0.99": Path_(listed(status="unread", min_prob=0.99)),
        "worklist --status reviewed": Path_(listed(status="reviewed")),
        "show (one study)": Path_(show),
        "status --json": Path_(status),
        "stats (review_stats)": Path_(stats),
        "stats pictures (review_curves)": Path_(curves),
        "/metrics scrape": Path_(scrape),
        "/readyz": Path_(ready),
        "dequeue (done jobs + 100 queued)": Path_(dequeue(db), requeue(db)),
        "dequeue (100 queued alone)": Path_(dequeue(empty), requeue(empty)),
        "commission (site_reads)": Path_(commission),
        "commission figures (the page)": Path_(commission_figures),
        **pages,
    }


def _probe(path: Path_, dbs: list[Any], conn: Any) -> None:
    """The child's one call: its seconds and account, or the error, sent up ``conn``."""
    for db in dbs:
        db.engine.dispose(close=False)  # the parent's pooled connections stay the parent's
    try:
        t0 = time.perf_counter()
        detail = path.call()
        conn.send(("ok", time.perf_counter() - t0, detail))
    except BaseException as exc:
        conn.send(("error", None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"))


def p95(seconds: list[float]) -> float:
    ordered = sorted(seconds)
    return ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]


def measure(
    name: str, path: Path_, dbs: list[Any], repeat: int, limit: float, budget: float
) -> Timing:
    """Probe once in a forked child (killed past ``limit``), then warm-up and repeats."""
    ctx = multiprocessing.get_context("fork")
    here, there = ctx.Pipe(duplex=False)
    child = ctx.Process(target=_probe, args=(path, dbs, there), daemon=True)
    child.start()
    there.close()
    got: Any = None
    if here.poll(limit):
        try:
            got = here.recv()
        except EOFError:
            got = ("error", None, f"the child died (exit code {child.exitcode})")
    else:
        child.kill()
    child.join()
    if path.after is not None:
        path.after()
    if got is None:
        return Timing(name, "slow", detail=f"> {limit:.0f} s")
    status, first, detail = got
    if status == "error":
        return Timing(name, "error", detail=detail)
    path.call()  # warm-up, in this process
    if path.after is not None:
        path.after()
    seconds: list[float] = []
    while len(seconds) < repeat and (len(seconds) < 3 or sum(seconds) < budget):
        t0 = time.perf_counter()
        detail = path.call()
        seconds.append(time.perf_counter() - t0)
        if path.after is not None:
            path.after()
    return Timing(name, "ok", first, statistics.median(seconds), p95(seconds), len(seconds), detail)


def time_paths(
    url: str,
    empty_url: str,
    workdir: Path,
    *,
    repeat: int = 20,
    limit: float = 30.0,
    budget: float = 60.0,
    only: str | None = None,
    quiet: bool = False,
    web: bool = True,
) -> list[Timing]:
    """Each path over the filled database ``url`` (dequeue's baseline over ``empty_url``)."""
    from screener.config import load_settings
    from screener.db import Database

    config = workdir / "empty.toml"  # defaults, not the checkout's screener.toml
    config.write_text("")
    settings = load_settings(
        config,
        overrides={
            "database.url": url,
            "storage.spool_dir": str(workdir / "spool"),
            "web.trusted_user_header": "X-Remote-User",
        },
        environ={},
    )
    db, empty = Database(url), Database(empty_url)
    timings: list[Timing] = []
    try:
        with ExitStack() as stack:
            port = stack.enter_context(web_server(settings, db)) if web else None
            timings = _each(
                paths(db, empty, settings, port), [db, empty], repeat, limit, budget, only, quiet
            )
    finally:
        db.dispose()
        empty.dispose()
    return timings


def _each(
    named: dict[str, Path_],
    dbs: list[Any],
    repeat: int,
    limit: float,
    budget: float,
    only: str | None,
    quiet: bool,
) -> list[Timing]:
    """Each of ``named`` (those whose name holds ``only``) measured in turn."""
    timings = []
    for name, path in named.items():
        if only is not None and only.lower() not in name.lower():
            continue
        timing = measure(name, path, dbs, repeat, limit, budget)
        if not quiet:
            print(f"  {_line(timing)}", flush=True)
        timings.append(timing)
    return timings


# ---------------------------------------------------------------------------------------
# the table


def _ms(t: Timing | None) -> str:
    if t is None:
        return "-"
    if t.status == "slow":
        return t.detail
    if t.status == "error":
        return "error"
    assert t.p50 is not None and t.p95 is not None
    return f"{t.p50 * 1000:,.1f} / {t.p95 * 1000:,.1f}"


def _line(t: Timing) -> str:
    if t.status != "ok":
        return f"{t.path:<36} {t.status}: {t.detail}"
    return f"{t.path:<36} {_ms(t):>22} ms  n={t.calls:<3} {t.detail}"


def table(runs: dict[str, list[Timing]]) -> str:
    """path | SQLite p50 / p95 | PostgreSQL p50 / p95 (ms), with what each path returned."""
    kinds = [k for k in ("sqlite", "postgresql") if k in runs]
    names = list(dict.fromkeys(t.path for k in kinds for t in runs[k]))
    by = {k: {t.path: t for t in runs[k]} for k in kinds}
    head = f"{'path':<36}" + "".join(f" {k + ' p50 / p95 ms':>28}" for k in kinds)
    lines = [head]
    for name in names:
        lines.append(f"{name:<36}" + "".join(f" {_ms(by[k].get(name)):>28}" for k in kinds))
    notes = []
    for k in kinds:
        for t in runs[k]:
            if t.status == "error":
                notes.append(f"{k}, {t.path}: {t.detail}")
    return "\n".join(lines + (["", *notes] if notes else []))


def record(text: str) -> None:
    """Append a run's section to benchmarks/RESULTS.md (the heading once)."""
    old = RESULTS_MD.read_text()
    with RESULTS_MD.open("a") as out:
        if HEADING not in old:
            out.write(f"\n{HEADING}\n")
        out.write(text)


@dataclass
class State:
    """What ``--keep`` leaves for ``--reuse``: the databases and their row counts."""

    results: int
    made: str
    urls: dict[str, dict[str, str]] = field(default_factory=dict)  # kind -> full/empty -> url
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    fill_seconds: dict[str, float] = field(default_factory=dict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--reviews", type=int, default=None, help="default: 5 %% of --results")
    parser.add_argument("--audit-events", type=int, default=None, help="default: --results / 5")
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--limit", type=float, default=30.0, help="seconds of one call past which a path is not repeated")  # fmt: skip
    parser.add_argument("--budget", type=float, default=60.0, help="seconds of repeats per path")  # fmt: skip
    parser.add_argument("--only", default=None, help="time the paths whose name holds this")
    parser.add_argument("--keep", action="store_true", help="keep the databases for --reuse")
    parser.add_argument("--reuse", action="store_true", help="time the databases --keep left")
    parser.add_argument("--state", type=Path, default=STATE_DIR / "state.json")
    parser.add_argument("--no-record", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--json-out", type=Path, default=None, help="write timings and counts here")  # fmt: skip
    parser.add_argument("--note", default=f"{os.cpu_count()} cores", help="the machine, in words")  # fmt: skip
    args = parser.parse_args(argv)
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [{"postgres": "postgresql"}.get(args.db, args.db)]  # fmt: skip
    reviews = args.reviews if args.reviews is not None else args.results // 20
    audit_events = args.audit_events if args.audit_events is not None else args.results // 5
    runs: dict[str, list[Timing]] = {}
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        if args.reuse:
            state = State(**json.loads(args.state.read_text()))
        else:
            state = State(args.results, datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"))
            kept_in = args.state.parent if args.keep else None
            for kind in kinds:
                state.urls[kind] = _made(kind, kept_in, work, args.results, stack)
                print(f"{kind}: filling {args.results:,} results", flush=True)
                t0 = time.perf_counter()
                fill(state.urls[kind]["full"], args.results, reviews, audit_events)
                state.fill_seconds[kind] = time.perf_counter() - t0
                fill(state.urls[kind]["empty"], 0, 0, 0, quiet=True)
                state.counts[kind] = row_counts(state.urls[kind]["full"])
            if args.keep:
                args.state.parent.mkdir(parents=True, exist_ok=True)
                args.state.write_text(json.dumps(asdict(state), indent=2))
                print(f"kept: {args.state}")
        for kind in kinds:
            if kind not in state.urls:
                continue
            print(f"{kind}: timing (repeat {args.repeat}, limit {args.limit:.0f} s)", flush=True)
            runs[kind] = time_paths(
                state.urls[kind]["full"], state.urls[kind]["empty"], work, repeat=args.repeat,
                limit=args.limit, budget=args.budget, only=args.only,
            )  # fmt: skip
    text = table(runs)
    print(text)
    counts = next(iter(state.counts.values()), {})
    section = (
        f"\n### {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, --results {state.results:,}\n\n"
        f"Machine: {args.note}. Filled {state.made}"
        + "".join(f"; {k} in {s:.0f} s" for k, s in state.fill_seconds.items())
        + ". Rows: " + ", ".join(f"{t} {n:,}" for t, n in counts.items())
        + f".\np50 / p95 of up to {args.repeat} calls after one warm-up (fewer where they passed"
        f" {args.budget:.0f} s; \"> {args.limit:.0f} s\": one call passed it, not repeated).\n\n"
        f"```\n{text}\n```\n"
    )  # fmt: skip
    if not args.no_record:
        record(section)
    if args.json_out is not None:
        args.json_out.write_text(json.dumps({
            "counts": state.counts,
            "timings": {k: [asdict(t) for t in ts] for k, ts in runs.items()},
        }, indent=2))  # fmt: skip
    return 0


def _made(
    kind: str, kept_in: Path | None, work: Path, results: int, stack: ExitStack
) -> dict[str, str]:
    """The full and the empty database of ``kind``: SQLite files in ``kept_in`` (the state
    file's folder) or ``work``; PostgreSQL ones dropped when ``stack`` closes unless kept."""
    if kind == "sqlite":
        folder = kept_in or work
        folder.mkdir(parents=True, exist_ok=True)
        urls = {}
        for which in ("full", "empty"):
            path = folder / f"scale-{results}-{which}.db"
            for old in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
                old.unlink(missing_ok=True)
            urls[which] = f"sqlite:///{path}"
        return urls
    urls = {"full": pg_create(), "empty": pg_create()}
    if kept_in is None:
        for url in urls.values():
            stack.callback(pg_drop, url)
    return urls


if __name__ == "__main__":
    raise SystemExit(main())
