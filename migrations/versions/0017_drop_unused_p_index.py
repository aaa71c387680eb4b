"""drop ix_study_scores_model_uid_assessment_probability (issue 24): no read path uses it

Commissioning's histogram of the assessed P groups in the order of
``ix_study_scores_assessed_p_bins`` (migration 0016, :mod:`screener.db.bins`); it was the only
query that filtered ``study_scores`` by model UID, so the index of 0014 on (model UID,
assessment, P) only cost every write of a summary row (tests/views/test_read_path_plans.py
EXPLAINs each read path without it).

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06 07:10:00
"""

from __future__ import annotations

from alembic import op

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

INDEX = "ix_study_scores_model_uid_assessment_probability"


def upgrade() -> None:
    op.drop_index(INDEX, table_name="study_scores")


def downgrade() -> None:
    op.create_index(INDEX, "study_scores", ["model_uid", "assessment", "probability"], unique=False)
