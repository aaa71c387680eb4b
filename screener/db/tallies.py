"""Row counts kept on write, so that ``screener status``, the status page and the ``/metrics``
scrape read a few dozen rows instead of counting a year's jobs, images, results, SR deliveries
and audit events at every call (issue 24: 0.6-1.9 s at a million results).

``row_tallies`` holds signed counts per (table, state, reason): jobs by state and reason,
images, results by label, exports by state, audit events by event. Database triggers made by
migration 0016 keep it in the same transaction as the change itself, so every path that writes
these tables (the ORM, bulk ``UPDATE``s, ``COPY``) is counted without the code knowing:

* SQLite: a row trigger adds to the one row of its key (SQLite runs one writer at a time);
* PostgreSQL: a statement trigger reads the statement's transition tables and appends one
  signed row per key it changed. Appending takes no lock on a shared row, so concurrent
  listeners and workers never wait for (or deadlock on) a counter; :func:`read_tallies` folds
  the appended rows back into one per key when there are more than :data:`FOLD_ABOVE`.

:func:`recount` counts the same keys from the rows themselves: the migration's starting
figures, and the tests' check that the kept counts agree with a recount.

A later migration that rebuilds one of these tables on SQLite (Alembic's batch mode: create,
copy, drop, rename) drops its triggers with it: it must make them again (migration 0016's
``_sqlite_triggers``) and recount; tests/db/test_tallies.py fails until it does.
"""

from __future__ import annotations

from collections import Counter

from sqlalchemy import BigInteger, Index, Integer, String, func, select, text
from sqlalchemy.orm import Mapped, Session, mapped_column

from screener.db.models import AuditEvent, Base, Export, Instance, Job, Result

#: table -> (the column counted as ``state``, the column counted as ``reason``); None: "".
KEYS: dict[str, tuple[str | None, str | None]] = {
    "jobs": ("state", "reason"),
    "instances": (None, None),
    "results": ("label", None),
    "exports": ("state", None),
    "audit_events": ("event", None),
}

#: PostgreSQL: appended rows past which a read folds them into one per key.
FOLD_ABOVE = 200
#: pg_try_advisory_xact_lock's key for the fold ("tally" in ASCII): one fold at a time.
FOLD_LOCK = 0x74616C6C79

Key = tuple[str, str, str]  # (table, state, reason)


class RowTally(Base):
    """A signed count of one table's rows of one (state, reason); the sum over rows of a key is
    that key's count (PostgreSQL appends, SQLite keeps one row per key)."""

    __tablename__ = "row_tallies"
    __table_args__ = (Index("ix_row_tallies_tbl_state_reason", "tbl", "state", "reason"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    tbl: Mapped[str] = mapped_column(String(32))
    state: Mapped[str] = mapped_column(String(64))  # "" where the table has no state
    reason: Mapped[str] = mapped_column(String(64))  # "" where none was given
    n: Mapped[int] = mapped_column(BigInteger)


def read_tallies(session: Session) -> Counter[Key]:
    """Every kept count by (table, state, reason); on PostgreSQL the appended rows are first
    folded into one per key when there are many (unless another session is folding)."""
    if session.get_bind().dialect.name == "postgresql":
        fold(session)
    rows = session.execute(
        select(RowTally.tbl, RowTally.state, RowTally.reason, func.sum(RowTally.n)).group_by(
            RowTally.tbl, RowTally.state, RowTally.reason
        )
    ).all()
    return Counter({(t, s, r): int(n or 0) for t, s, r, n in rows if n})


def fold(session: Session, above: int = FOLD_ABOVE) -> bool:
    """PostgreSQL: replace the appended rows by one per key (zero keys dropped), in this
    transaction; True when it folded. The ``DELETE ... RETURNING`` sees only rows committed
    before it, so rows appended meanwhile stay and count once; the advisory lock keeps two
    folds from taking each other's rows in different orders."""
    rows = session.scalar(select(func.count()).select_from(RowTally)) or 0
    if rows <= above:
        return False
    if not session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": FOLD_LOCK}):
        return False
    session.execute(
        text(
            "WITH gone AS (DELETE FROM row_tallies RETURNING tbl, state, reason, n) "
            "INSERT INTO row_tallies (tbl, state, reason, n) "
            "SELECT tbl, state, reason, SUM(n) FROM gone GROUP BY tbl, state, reason "
            "HAVING SUM(n) <> 0"
        )
    )
    return True


def recount(session: Session) -> Counter[Key]:
    """The same counts from the rows themselves (slow: the migration and the tests)."""
    counts: Counter[Key] = Counter()
    for state, reason, n in session.execute(
        select(Job.state, Job.reason, func.count()).group_by(Job.state, Job.reason)
    ).all():
        counts["jobs", str(state), reason or ""] += int(n)
    counts["instances", "", ""] = int(
        session.scalar(select(func.count()).select_from(Instance)) or 0
    )
    for column, table in (
        (Result.label, "results"),
        (Export.state, "exports"),
        (AuditEvent.event, "audit_events"),
    ):
        for key, n in session.execute(select(column, func.count()).group_by(column)).all():
            counts[table, str(key), ""] += int(n)
    return Counter({k: n for k, n in counts.items() if n})


def by_state(tallies: Counter[Key], table: str) -> dict[str, int]:
    """``table``'s counts by state (over every reason)."""
    out: Counter[str] = Counter()
    for (tbl, state, _), n in tallies.items():
        if tbl == table:
            out[state] += n
    return dict(out)


def by_state_reason(tallies: Counter[Key], table: str) -> dict[tuple[str, str], int]:
    """``table``'s counts by (state, reason); reason "" where none was given."""
    return {(s, r): n for (tbl, s, r), n in tallies.items() if tbl == table}
