"""reads in the reader's words (reviews.finding, 'cannot tell'), when a study was read, studies.study_description

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 01:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_VERDICTS_NOW = "verdict IN ('agree', 'disagree', 'indeterminate')"
_VERDICTS_BEFORE = "verdict IN ('agree', 'disagree')"


def upgrade() -> None:
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.add_column(sa.Column("study_description", sa.String(64), nullable=True))
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.add_column(sa.Column("finding", sa.String(16), nullable=True))
        batch_op.alter_column("radiologist_positive", existing_type=sa.Boolean(), nullable=True)
        batch_op.drop_constraint(op.f("ck_reviews_verdict"), type_="check")
        batch_op.create_check_constraint("verdict", sa.text(_VERDICTS_NOW))
    with op.batch_alter_table("study_scores", schema=None) as batch_op:
        batch_op.add_column(sa.Column("read_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        "UPDATE study_scores SET read_at = (SELECT v.created_at FROM reviews v "
        "WHERE v.study_id = study_scores.study_id ORDER BY v.created_at DESC, v.id DESC LIMIT 1)"
    )
    # the reads before this revision were in the model's terms: their finding follows from them
    op.execute(
        "UPDATE reviews SET finding = CASE WHEN radiologist_positive THEN 'pneumonia' "
        "ELSE 'no_pneumonia' END"
    )


def downgrade() -> None:
    op.execute("DELETE FROM reviews WHERE verdict = 'indeterminate'")
    with op.batch_alter_table("reviews", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_reviews_verdict"), type_="check")
        batch_op.create_check_constraint("verdict", sa.text(_VERDICTS_BEFORE))
        batch_op.alter_column("radiologist_positive", existing_type=sa.Boolean(), nullable=False)
        batch_op.drop_column("finding")
    with op.batch_alter_table("study_scores", schema=None) as batch_op:
        batch_op.drop_column("read_at")
    with op.batch_alter_table("studies", schema=None) as batch_op:
        batch_op.drop_column("study_description")
