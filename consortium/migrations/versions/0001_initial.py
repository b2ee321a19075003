"""Initial schema: banks, tokens, key material, runs, rounds, contributions, proposals, models.

Revision ID: 0001_initial
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "banks",
        sa.Column("bank_id", sa.String(64), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("signing_key", sa.String(64), nullable=True),
        sa.Column("box_key", sa.String(64), nullable=True),
        sa.Column("enrolled_at", sa.DateTime(), nullable=False),
        sa.Column("keys_registered_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "tokens",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("token_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("revoked_at", sa.DateTime(), nullable=True),
    )
    op.create_table(
        "key_material",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("context_digest", sa.String(64), nullable=False),
        sa.Column("context_size", sa.BigInteger(), nullable=False),
        sa.Column("scheme", sa.String(16), nullable=False),
        sa.Column("key_id", sa.String(32), nullable=False),
        sa.Column("publisher_bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("published_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "key_shares",
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), primary_key=True),
        sa.Column("share_digest", sa.String(64), nullable=False),
        sa.Column("share_size", sa.BigInteger(), nullable=False),
        sa.Column("posted_by", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("posted_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("model", sa.String(16), nullable=False),
        sa.Column("params", sa.JSON(), nullable=False),
        sa.Column("min_banks", sa.Integer(), nullable=False),
        sa.Column("round_timeout_s", sa.Integer(), nullable=False),
        sa.Column("participants", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_runs_state", "runs", ["state"])
    op.create_table(
        "rounds",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("round_key", sa.String(200), nullable=False),
        sa.Column("n_values", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("deadline", sa.DateTime(), nullable=False),
        sa.Column("closed_at", sa.DateTime(), nullable=True),
        sa.Column("aggregate_digest", sa.String(64), nullable=True),
        sa.Column("aggregate_size", sa.BigInteger(), nullable=True),
        sa.Column("n_addends", sa.Integer(), nullable=True),
        sa.Column("dropped", sa.JSON(), nullable=False),
        sa.Column("failure_reason", sa.Text(), nullable=True),
        sa.UniqueConstraint("run_id", "round_key", name="uq_rounds_run_key"),
    )
    op.create_index("ix_rounds_state", "rounds", ["state"])
    op.create_index("ix_rounds_deadline", "rounds", ["deadline"])
    op.create_table(
        "contributions",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("round_id", sa.Integer(), sa.ForeignKey("rounds.id"), nullable=False),
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("payload_digest", sa.String(64), nullable=False),
        sa.Column("payload_size", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
        sa.Column("payload_kept", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("round_id", "bank_id", name="uq_contributions_round_bank"),
    )
    op.create_index("ix_contributions_run_id", "contributions", ["run_id"])
    op.create_index("ix_contributions_payload_digest", "contributions", ["payload_digest"])
    op.create_table(
        "proposals",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id"), nullable=False),
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("model_digest", sa.String(64), nullable=False),
        sa.Column("model_size", sa.BigInteger(), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("received_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_proposals_run_id", "proposals", ["run_id"])
    op.create_table(
        "models",
        sa.Column("version", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(64), sa.ForeignKey("runs.run_id"), nullable=False, unique=True),
        sa.Column("model_digest", sa.String(64), nullable=False),
        sa.Column("model_size", sa.BigInteger(), nullable=False),
        sa.Column("family", sa.String(16), nullable=False),
        sa.Column("banks", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )


def downgrade() -> None:
    for table in ("models", "proposals", "contributions", "rounds", "runs", "key_shares", "key_material", "tokens", "banks"):
        op.drop_table(table)
