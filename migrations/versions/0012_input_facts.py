"""drift monitoring: the input facts of each instance (bits stored, photometric
interpretation, manufacturer) beside its rows and columns

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 02:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # instances received before this revision keep NULL: the monitor counts them "unknown"
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.add_column(sa.Column("bits_stored", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("photometric_interpretation", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("manufacturer", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("instances", schema=None) as batch_op:
        batch_op.drop_column("manufacturer")
        batch_op.drop_column("photometric_interpretation")
        batch_op.drop_column("bits_stored")
