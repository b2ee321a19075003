"""The promotion gate: runs carry their baseline and tolerance, banks' signed assessments, each
model's status and assessment, and the model each family serves now.

Revision ID: 0006_promotion
Revises: 0005_schedules
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_promotion"
down_revision = "0005_schedules"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("baseline_version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("promotion_tolerance", sa.Float(), nullable=True))
    with op.batch_alter_table("models") as batch:
        batch.add_column(sa.Column("status", sa.String(16), nullable=False, server_default="promoted"))
        batch.add_column(sa.Column("assessment", sa.Text(), nullable=True))
        batch.add_column(sa.Column("baseline_version", sa.Integer(), nullable=True))
    op.create_table(
        "assessments",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id"), nullable=False, index=True),
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("posted_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("run_id", "bank_id", name="uq_assessments_run_bank"),
    )
    op.create_table(
        "current_models",
        sa.Column("family", sa.String(16), primary_key=True),
        sa.Column("version", sa.Integer(), sa.ForeignKey("models.version"), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
    )
    # Models published before the gate were all served: the newest of each family is current.
    op.execute(
        "INSERT INTO current_models (family, version, since, reason) "
        "SELECT family, MAX(version), CURRENT_TIMESTAMP, 'published before the promotion gate' FROM models GROUP BY family"
    )


def downgrade() -> None:
    op.drop_table("current_models")
    op.drop_table("assessments")
    with op.batch_alter_table("models") as batch:
        batch.drop_column("baseline_version")
        batch.drop_column("assessment")
        batch.drop_column("status")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("promotion_tolerance")
        batch.drop_column("baseline_version")
