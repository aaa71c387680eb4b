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


#: the worklist of read studies, in flag and audit groups: partial (the read are a few in a
#: hundred), so that no other filter is drawn to an index led by ``reviewed``
READ = "ix_study_scores_read_flagged_audit"


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns, unique=False)
    op.create_index(
        READ,
        "study_scores",
        ["flagged", "audit"],
        unique=False,
        sqlite_where=sa.text("reviewed = 1"),
        postgresql_where=sa.text("reviewed"),
    )


def downgrade() -> None:
    op.drop_index(READ, table_name="study_scores")
    for name, (table, _columns) in reversed(INDEXES.items()):
        op.drop_index(name, table_name=table)
