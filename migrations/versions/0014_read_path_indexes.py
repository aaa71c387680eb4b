"""indexes for a year of reads (issue 24): the counts and the reads' filters

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 04:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

#: name -> (table, columns)
INDEXES = {
    # status / metrics: results by label, finished jobs by state and reason (index-only counts)
    "ix_results_label": ("results", ["label"]),
    "ix_jobs_state_reason": ("jobs", ["state", "reason"]),
    # commissioning's histogram of every assessed P of a model lineage (index-only)
    "ix_study_scores_model_uid_assessment_probability": (
        "study_scores",
        ["model_uid", "assessment", "probability"],
    ),
    # the latest read of each study
    "ix_reviews_study_id_created_at_id": ("reviews", ["study_id", "created_at", "id"]),
}


#: the worklist of unread and of read studies, in flag and audit groups: partial, so that no
#: other filter is drawn to an index led by ``reviewed``; on PostgreSQL they carry the
#: order's columns, so the order and limit read the index alone
PARTIAL = {
    # on PostgreSQL only: SQLite, without statistics, would take it for the worklist of the
    # last hour too, over ix_study_scores_received_at
    "ix_study_scores_unread_flagged_audit": (None, "NOT reviewed"),
    "ix_study_scores_read_flagged_audit": ("reviewed = 1", "reviewed"),
}
#: the studies outside the model's domain (a few in a hundred), left out of the reads'
#: pictures and commissioning without a lookup per read
OUTSIDE = "ix_study_scores_outside_domain"
ORDER_COLUMNS = ["assessment", "probability", "received_epoch", "received_at", "study_id"]


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns, unique=False)
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name, (sqlite_where, postgresql_where) in PARTIAL.items():
        if sqlite_where is None and not postgresql:
            continue
        op.create_index(
            name,
            "study_scores",
            ["flagged", "audit"],
            unique=False,
            sqlite_where=sa.text(sqlite_where) if sqlite_where else None,
            postgresql_where=sa.text(postgresql_where),
            postgresql_include=ORDER_COLUMNS,
        )
    op.create_index(
        OUTSIDE,
        "study_scores",
        ["study_id"],
        unique=False,
        sqlite_where=sa.text("assessment = 'outside_domain'"),
        postgresql_where=sa.text("assessment = 'outside_domain'"),
    )


def downgrade() -> None:
    op.drop_index(OUTSIDE, table_name="study_scores")
    postgresql = op.get_bind().dialect.name == "postgresql"
    for name, (sqlite_where, _) in reversed(PARTIAL.items()):
        if sqlite_where is not None or postgresql:
            op.drop_index(name, table_name="study_scores")
    for name, (table, _columns) in reversed(INDEXES.items()):
        op.drop_index(name, table_name=table)
