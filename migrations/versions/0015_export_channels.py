"""exports over every channel (issue 25): DICOMweb, HL7 v2 and FHIR destinations, and IHE
AIRAI assessments of a read

* ``destination`` grows to 512 characters: a STOW-RS or FHIR base URL, an ``mllp://`` address;
* ``payload``: what the row delivers (``result`` by default, so that rows inserted as before
  stay results), ``result`` (the AI result of a scored image) or
  ``assessment`` (a radiologist's read of it, IHE AIRAI);
* ``review_id``: the read an assessment delivers; ``assessed_uid``: the SOP Instance UID of the
  AI result SR it assesses;
* ``receipt``: what the destination answered on success (an HL7 ACK's message control id, a
  FHIR resource's Location, a STOW-RS Retrieve URL), shown by ``screener exports list``.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-06 06:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.alter_column(
            "destination",
            existing_type=sa.String(64),
            type_=sa.String(512),
            existing_nullable=False,
        )
        batch_op.add_column(
            sa.Column("payload", sa.String(16), nullable=False, server_default="result")
        )
        batch_op.add_column(sa.Column("review_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("assessed_uid", sa.String(64), nullable=True))
        batch_op.add_column(sa.Column("receipt", sa.Text(), nullable=True))
        batch_op.create_foreign_key(
            op.f("fk_exports_review_id_reviews"), "reviews", ["review_id"], ["id"]
        )
        batch_op.create_index(op.f("ix_exports_review_id"), ["review_id"], unique=False)
        batch_op.create_check_constraint("payload", sa.text("payload IN ('result', 'assessment')"))


def downgrade() -> None:
    op.execute("DELETE FROM exports WHERE payload <> 'result'")
    with op.batch_alter_table("exports", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_exports_payload"), type_="check")
        batch_op.drop_index(op.f("ix_exports_review_id"))
        batch_op.drop_constraint(op.f("fk_exports_review_id_reviews"), type_="foreignkey")
        batch_op.drop_column("receipt")
        batch_op.drop_column("assessed_uid")
        batch_op.drop_column("review_id")
        batch_op.drop_column("payload")
        batch_op.alter_column(
            "destination",
            existing_type=sa.String(512),
            type_=sa.String(64),
            existing_nullable=False,
        )
