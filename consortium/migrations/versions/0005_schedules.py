"""Schedules: each model family's cron cadence, the run it opens, and its last firing.

Revision ID: 0005_schedules
Revises: 0004_run_window
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_schedules"
down_revision = "0004_run_window"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "schedules",
        sa.Column("model", sa.String(16), primary_key=True),
        sa.Column("cron", sa.String(100), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("train_days", sa.Integer(), nullable=False),
        sa.Column("validation_days", sa.Integer(), nullable=False),
        sa.Column("label_delay_days", sa.Integer(), nullable=False),
        sa.Column("min_banks", sa.Integer(), nullable=True),
        sa.Column("run_timeout_s", sa.Integer(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.Column("last_fired_local", sa.DateTime(), nullable=True),
        sa.Column("last_fired_at", sa.DateTime(), nullable=True),
        sa.Column("last_run_id", sa.String(64), nullable=True),
        sa.Column("last_outcome", sa.Text(), nullable=True),
    )


def downgrade() -> None:
    op.drop_table("schedules")
