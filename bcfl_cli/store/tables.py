"""Table definitions of the ledger (the migrations in ``migrations/`` must agree, a test checks).

The JSON columns hold the exact canonical bytes (RFC 8785) that were hashed and signed; the
other columns are an index over them, re-checked against the JSON on every read.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

# 64-bit integers on PostgreSQL (block times are milliseconds since 1970, past 2^31);
# SQLite's INTEGER already is 64-bit, and the schema text of its file stays as it was.
_INT = Integer().with_variant(BigInteger(), "postgresql")

metadata = MetaData()

meta = Table(
    "meta",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

blocks = Table(
    "blocks",
    metadata,
    Column("height", _INT, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("prev", String(64), nullable=False),
    Column("time", _INT, nullable=False),
    Column("proposer", String(64), nullable=False),
    Column("header", Text, nullable=False),
    Column("commit", Text, nullable=True),
)

txs = Table(
    "txs",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("height", _INT, ForeignKey("blocks.height"), nullable=False),
    Column("idx", _INT, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("author", String(64), nullable=False),
    Column("body", Text, nullable=False),
    UniqueConstraint("height", "idx", name="uq_txs_height_idx"),
)

Index("ix_txs_kind", txs.c.kind)
Index("ix_txs_author", txs.c.author)
