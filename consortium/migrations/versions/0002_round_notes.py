"""Round notes: each summed bank's signed note (its self-mask seed) to a released round.

Revision ID: 0002_round_notes
Revises: 0001_initial
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_round_notes"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "round_notes",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("round_id", sa.Integer(), sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("posted_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("round_id", "bank_id", name="uq_round_notes_round_bank"),
    )


def downgrade() -> None:
    op.drop_table("round_notes")
