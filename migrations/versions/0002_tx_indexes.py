"""Indexes for looking transactions up by kind and by author (bcfl log, node queries).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-24
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_txs_kind", "txs", ["kind"])
    op.create_index("ix_txs_author", "txs", ["author"])


def downgrade() -> None:
    op.drop_index("ix_txs_author", table_name="txs")
    op.drop_index("ix_txs_kind", table_name="txs")
