"""audit reads against verification bias: audit_draws, study_scores.audit

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 01:55:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_draws",
        sa.Column("study_id", sa.Integer(), nullable=False),
        sa.Column("u", sa.Float(), nullable=False),
        sa.Column("share", sa.Float(), nullable=False),
        sa.Column("drawn_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["study_id"], ["studies.id"], name=op.f("fk_audit_draws_study_id_studies")
        ),
        sa.PrimaryKeyConstraint("study_id", name=op.f("pk_audit_draws")),
    )
    # studies scored before this revision were drawn for nothing: their reads are not audits
    with op.batch_alter_table("study_scores", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("audit", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    with op.batch_alter_table("study_scores", schema=None) as batch_op:
        batch_op.alter_column("audit", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("study_scores", schema=None) as batch_op:
        batch_op.drop_column("audit")
    op.drop_table("audit_draws")
