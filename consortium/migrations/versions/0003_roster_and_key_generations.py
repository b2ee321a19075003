"""Rosters the banks sign, key generations (rotation), signed shares per key, a run's key.

Revision ID: 0003_roster_keys
Revises: 0002_round_notes
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_roster_keys"
down_revision = "0002_round_notes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "rosters",
        sa.Column("digest", sa.String(64), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False, index=True),
        sa.Column("document", sa.Text(), nullable=False),
        sa.Column("proposed_by", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("proposed_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "roster_signatures",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("roster_digest", sa.String(64), sa.ForeignKey("rosters.digest"), nullable=False),
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False),
        sa.Column("signed_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("roster_digest", "bank_id", name="uq_roster_signatures_roster_bank"),
    )
    with op.batch_alter_table("key_material") as batch:
        batch.add_column(sa.Column("roster_version", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("roster_digest", sa.String(64), nullable=False, server_default=""))
        batch.create_unique_constraint("uq_key_material_key_id", ["key_id"])
    op.create_table(
        "sealed_shares",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("key_id", sa.String(32), nullable=False, index=True),
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("share_digest", sa.String(64), nullable=False),
        sa.Column("share_size", sa.BigInteger(), nullable=False),
        sa.Column("posted_by", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("signature", sa.String(128), nullable=False, server_default=""),
        sa.Column("posted_at", sa.DateTime(), nullable=False),
        sa.UniqueConstraint("key_id", "bank_id", name="uq_sealed_shares_key_bank"),
    )
    # Shares relayed before this revision belong to the one key of generation 1.
    op.execute(
        "INSERT INTO sealed_shares (key_id, bank_id, share_digest, share_size, posted_by, signature, posted_at) "
        "SELECT key_material.key_id, key_shares.bank_id, key_shares.share_digest, key_shares.share_size, "
        "key_shares.posted_by, '', key_shares.posted_at FROM key_shares JOIN key_material ON key_material.id = 1"
    )
    op.drop_table("key_shares")
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("key_id", sa.String(32), nullable=True))
    op.execute("UPDATE runs SET key_id = (SELECT key_id FROM key_material WHERE key_material.id = 1)")


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("key_id")
    op.create_table(
        "key_shares",
        sa.Column("bank_id", sa.String(64), sa.ForeignKey("banks.bank_id"), primary_key=True),
        sa.Column("share_digest", sa.String(64), nullable=False),
        sa.Column("share_size", sa.BigInteger(), nullable=False),
        sa.Column("posted_by", sa.String(64), sa.ForeignKey("banks.bank_id"), nullable=False),
        sa.Column("posted_at", sa.DateTime(), nullable=False),
    )
    op.execute(
        "INSERT INTO key_shares (bank_id, share_digest, share_size, posted_by, posted_at) "
        "SELECT bank_id, share_digest, share_size, posted_by, posted_at FROM sealed_shares "
        "WHERE key_id = (SELECT key_id FROM key_material WHERE id = 1)"
    )
    op.drop_table("sealed_shares")
    op.execute("DELETE FROM key_material WHERE id > 1")
    with op.batch_alter_table("key_material") as batch:
        batch.drop_constraint("uq_key_material_key_id", type_="unique")
        batch.drop_column("roster_digest")
        batch.drop_column("roster_version")
    op.drop_table("roster_signatures")
    op.drop_table("rosters")
