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

# 64-bit integers on PostgreSQL (block times are milliseconds since 1970, past 2^31);
# SQLite's INTEGER already is, and its table text stays as it was.
_INT = sa.Integer().with_variant(sa.BigInteger(), "postgresql")

_SQLITE_TRIGGERS = [
    f"CREATE TRIGGER {table}_no_{action.lower()} BEFORE {action} ON {table} "
    f"BEGIN SELECT RAISE(ABORT, '{table} are append-only'); END"
    for table in ("blocks", "txs")
    for action in ("UPDATE", "DELETE")
]

# PostgreSQL: row triggers for UPDATE and DELETE (an UPSERT's DO UPDATE fires them too), and a
# statement trigger for TRUNCATE, which fires no row trigger. Like SQLite's, they guard against
# bugs, not against the database's owner (PITFALLS.md): verify-chain is the integrity check.
_POSTGRES_TRIGGERS = [
    "CREATE OR REPLACE FUNCTION bcfl_append_only() RETURNS trigger AS $$ "
    "BEGIN RAISE EXCEPTION '% are append-only', TG_TABLE_NAME; END $$ LANGUAGE plpgsql",
    *(
        statement
        for table in ("blocks", "txs")
        for statement in (
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {table} "
            "FOR EACH ROW EXECUTE FUNCTION bcfl_append_only()",
            f"CREATE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION bcfl_append_only()",
        )
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
        sa.Column("height", _INT, primary_key=True, autoincrement=False),
        sa.Column("hash", sa.String(64), nullable=False, unique=True),
        sa.Column("prev", sa.String(64), nullable=False),
        sa.Column("time", _INT, nullable=False),
        sa.Column("proposer", sa.String(64), nullable=False),
        sa.Column("header", sa.Text, nullable=False),
        sa.Column("commit", sa.Text, nullable=True),
    )
    op.create_table(
        "txs",
        sa.Column("hash", sa.String(64), primary_key=True),
        sa.Column("height", _INT, sa.ForeignKey("blocks.height"), nullable=False),
        sa.Column("idx", _INT, nullable=False),
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
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION IF EXISTS bcfl_append_only()")
