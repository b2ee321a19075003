"""A run's data window, its deadline, and the banks that withdrew with their reasons.

Revision ID: 0004_run_window
Revises: 0003_roster_keys
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_window"
down_revision = "0003_roster_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("window", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("deadline", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("withdrawn", sa.JSON(), nullable=True))
        batch.create_index("ix_runs_deadline", ["deadline"])


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_index("ix_runs_deadline")
        batch.drop_column("withdrawn")
        batch.drop_column("deadline")
        batch.drop_column("window")
