"""A large round being summed off the request holds a lease: until it ends, no other request or
process starts the same sum; a lease left by a process that died runs out and the sum is made again.

Revision ID: 0008_sum_lease
Revises: 0007_ledger
Create Date: 2026-12-03
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_sum_lease"
down_revision = "0007_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("summing_until", sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_column("summing_until")
