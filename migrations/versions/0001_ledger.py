"""The ledger: meta, blocks, txs, and the append-only triggers.

Revision ID: 0001
Revises:
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END"
    for table in ("blocks", "txs")
    for action in ("UPDATE", "DELETE")
]

_POSTGRES_TRIGGERS = [
    "CREATE FUNCTION bcfl_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION '% are append-only', TG_TABLE_NAME; END $$ LANGUAGE plpgsql",
    *(
        f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
        "FOR EACH ROW EXECUTE FUNCTION bcfl_append_only()"
        for table in ("blocks", "txs")
    ),
]


def upgrade() -> None:
    op.create_table(
        "meta",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
    )
    op.create_table(
        "blocks",
        sa.Column("height", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("time", sa.Integer, nullable=False),
        sa.Column("proposer", sa.String(64), nullable=False),
        sa.Column("header", sa.Text, nullable=False),
        sa.Column("commit", sa.Text, nullable=True),
    )
    op.create_table(
        "txs",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("height", sa.Integer, sa.ForeignKey("blocks.height"), nullable=False),
        sa.Column("idx", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("author", sa.String(64), nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.UniqueConstraint("height", "idx", name="uq_txs_height_idx"),
    )
    dialect = op.get_bind().dialect.name
    for statement in _SQLITE_TRIGGERS if dialect == "sqlite" else _POSTGRES_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("txs")
    op.drop_table("blocks")
    op.drop_table("meta")
