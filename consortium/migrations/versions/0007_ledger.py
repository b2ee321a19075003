"""The contribution ledger: entries, each with the signed checkpoint of the log up to it, and the
head row that serializes appends.

Revision ID: 0007_ledger
Revises: 0006_promotion
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_ledger"
down_revision = "0006_promotion"
branch_labels = None
depends_on = None


def upgrade() -> None:
    head = op.create_table(
        "ledger_head",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
    )
    op.bulk_insert(head, [{"id": 1, "size": 0}])
    op.create_table(
        "ledger_entries",
        sa.Column("seq", sa.BigInteger(), primary_key=True, autoincrement=False),
        sa.Column("event", sa.String(40), nullable=False),
        sa.Column("at", sa.DateTime(), nullable=False, index=True),
        sa.Column("bank_id", sa.String(64), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("model_version", sa.Integer(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("leaf_hash", sa.String(64), nullable=False),
        sa.Column("root", sa.String(64), nullable=False),
        sa.Column("timestamp_ms", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
    )
    # Each filter with the log order: a page of a million-entry log is read in order, not sorted.
    for column in ("event", "bank_id", "run_id", "model_version"):
        op.create_index(f"ix_ledger_entries_{column}_seq", "ledger_entries", [column, "seq"])
    op.create_index("ix_ledger_entries_bank_id_event_seq", "ledger_entries", ["bank_id", "event", "seq"])


def downgrade() -> None:
    op.drop_table("ledger_entries")
    op.drop_table("ledger_head")
