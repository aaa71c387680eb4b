"""audit counts kept when audit rows are pruned

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 00:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_counts",
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("event", sa.String(64), nullable=False),
        sa.Column("reason", sa.String(64), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("day", "event", "reason", name=op.f("pk_audit_counts")),
    )


def downgrade() -> None:
    op.drop_table("audit_counts")
