"""row counts kept on write (issue 24): ``row_tallies`` and the triggers that keep it; the
index of commissioning's bins of P

``screener status``, the status page and the ``/metrics`` scrape read jobs by state and reason,
images, results by label, exports by state and audit events by event from ``row_tallies``
(:mod:`screener.db.tallies`) instead of counting a year's rows at every call. Triggers keep it
in the transaction of each change: on SQLite a row trigger adds to its key's one row; on
PostgreSQL a statement trigger appends a signed row per key from the statement's transition
tables (no shared row locked, so concurrent writers never wait on a counter). The triggers are
made first, then the starting counts recounted from the rows, in this one transaction: a
PostgreSQL writer that comes meanwhile waits for the triggers' table lock, so it counts once.

``ix_study_scores_assessed_p_bins`` (:mod:`screener.db.bins`): the assessed studies' model
UID, bin of P and P, so commissioning's histogram is grouped in index order.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-06 06:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None

#: table -> (state expression, reason expression) over a row ``{r}``; screener.db.tallies.KEYS
KEYS: dict[str, tuple[str, str]] = {
    "jobs": ("{r}state", "coalesce({r}reason, '')"),
    "instances": ("''", "''"),
    "results": ("{r}label", "''"),
    "exports": ("{r}state", "''"),
    "audit_events": ("{r}event", "''"),
}
#: the columns whose update moves a row to another key (none: its updates never do)
UPDATED: dict[str, list[str]] = {
    "jobs": ["state", "reason"],
    "results": ["label"],
    "exports": ["state"],
    "audit_events": ["event"],
}


#: screener.db.bins: the bin of P, the literal the index's expression and the query share
P_BIN = "CAST(probability * 10000 AS INTEGER)"
ASSESSED = "assessment != 'outside_domain'"


def _key(table: str, row: str) -> tuple[str, str]:
    state, reason = KEYS[table]
    return state.format(r=row), reason.format(r=row)


def _sqlite_add(table: str, row: str, step: int) -> str:
    state, reason = _key(table, row + ".")
    match = f"tbl = '{table}' AND state = {state} AND reason = {reason}"
    return (
        f"INSERT INTO row_tallies (tbl, state, reason, n) SELECT '{table}', {state}, {reason}, 0 "
        f"WHERE NOT EXISTS (SELECT 1 FROM row_tallies WHERE {match}); "
        f"UPDATE row_tallies SET n = n + ({step}) WHERE {match};"
    )


def _sqlite_triggers(table: str) -> list[str]:
    made = [
        f"CREATE TRIGGER tally_{table}_insert AFTER INSERT ON {table} "
        f"BEGIN {_sqlite_add(table, 'NEW', 1)} END",
        f"CREATE TRIGGER tally_{table}_delete AFTER DELETE ON {table} "
        f"BEGIN {_sqlite_add(table, 'OLD', -1)} END",
    ]
    if table in UPDATED:
        moved = " OR ".join(f"OLD.{c} IS NOT NEW.{c}" for c in UPDATED[table])
        made.append(
            f"CREATE TRIGGER tally_{table}_update AFTER UPDATE OF {', '.join(UPDATED[table])} "
            f"ON {table} WHEN {moved} "
            f"BEGIN {_sqlite_add(table, 'OLD', -1)} {_sqlite_add(table, 'NEW', 1)} END"
        )
    return made


def _postgresql_triggers(table: str) -> list[str]:
    state, reason = _key(table, "")
    rows = "SELECT {s} AS s, {r} AS r, {d} AS d FROM {t}"
    new = rows.format(s=state, r=reason, d=1, t="new_rows")
    old = rows.format(s=state, r=reason, d=-1, t="old_rows")
    insert = (
        f"INSERT INTO row_tallies (tbl, state, reason, n) SELECT '{table}', s, r, SUM(d) "
        "FROM ({}) AS changed GROUP BY s, r HAVING SUM(d) <> 0;"
    )
    made = [
        f"CREATE FUNCTION tally_{table}() RETURNS trigger LANGUAGE plpgsql AS $$\n"
        "BEGIN\n"
        f"  IF TG_OP = 'INSERT' THEN {insert.format(new)}\n"
        f"  ELSIF TG_OP = 'DELETE' THEN {insert.format(old)}\n"
        f"  ELSE {insert.format(new + ' UNION ALL ' + old)}\n"
        "  END IF;\n"
        "  RETURN NULL;\n"
        "END $$",
        f"CREATE TRIGGER tally_{table}_insert AFTER INSERT ON {table} "
        f"REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION tally_{table}()",
        f"CREATE TRIGGER tally_{table}_delete AFTER DELETE ON {table} "
        f"REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION tally_{table}()",
    ]
    if table in UPDATED:
        made.append(
            f"CREATE TRIGGER tally_{table}_update AFTER UPDATE ON {table} "
            "REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION tally_{table}()"
        )
    return made


def upgrade() -> None:
    op.create_table(
        "row_tallies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tbl", sa.String(length=32), nullable=False),
        sa.Column("state", sa.String(length=64), nullable=False),
        sa.Column("reason", sa.String(length=64), nullable=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_row_tallies")),
    )
    op.create_index(
        "ix_row_tallies_tbl_state_reason", "row_tallies", ["tbl", "state", "reason"], unique=False
    )
    op.create_index(
        "ix_study_scores_assessed_p_bins",
        "study_scores",
        ["model_uid", sa.text(P_BIN), "probability"],
        unique=False,
        sqlite_where=sa.text(ASSESSED),
        postgresql_where=sa.text(ASSESSED.replace("!=", "<>")),
    )
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in KEYS:
        for statement in _postgresql_triggers(table) if postgresql else _sqlite_triggers(table):
            op.execute(statement)
    for table in KEYS:
        state, reason = _key(table, "")
        op.execute(
            f"INSERT INTO row_tallies (tbl, state, reason, n) SELECT '{table}', s, r, COUNT(*) "
            f"FROM (SELECT {state} AS s, {reason} AS r FROM {table}) AS kept GROUP BY s, r"
        )


def downgrade() -> None:
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table in KEYS:
        for what in ("insert", "delete", "update"):
            op.execute(
                f"DROP TRIGGER IF EXISTS tally_{table}_{what}"
                + (f" ON {table}" if postgresql else "")
            )
        if postgresql:
            op.execute(f"DROP FUNCTION IF EXISTS tally_{table}()")
    op.drop_index("ix_study_scores_assessed_p_bins", table_name="study_scores")
    op.drop_index("ix_row_tallies_tbl_state_reason", table_name="row_tallies")
    op.drop_table("row_tallies")
