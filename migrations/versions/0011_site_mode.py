"""silent start: site_events (going live, back to shadow) and exports held in state 'shadow'

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 01:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_STATES_NOW = "state IN ('pending', 'delivered', 'dead', 'shadow')"
_STATES_BEFORE = "state IN ('pending', 'delivered', 'dead')"


def upgrade() -> None:
    op.create_table(
        "site_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("event", sa.String(16), nullable=False),
        sa.Column("operator", sa.String(64), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("bundle_uid", sa.String(64), nullable=False),
        sa.Column("bundle_name", sa.String(64), nullable=False),
        sa.Column("bundle_version", sa.String(32), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("target_sensitivity", sa.Float(), nullable=True),
        sa.CheckConstraint("event IN ('go_live', 'shadow')", name=op.f("ck_site_events_event")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_site_events")),
    )
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_exports_state"), type_="check")
        batch_op.create_check_constraint("state", sa.text(_STATES_NOW))


def downgrade() -> None:
    # an SR built in shadow was never sent: without the state it would be pending, and sent
    op.execute("DELETE FROM exports WHERE state = 'shadow'")
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_exports_state"), type_="check")
        batch_op.create_check_constraint("state", sa.text(_STATES_BEFORE))
    op.drop_table("site_events")
