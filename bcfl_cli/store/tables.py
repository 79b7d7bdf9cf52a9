"""Table definitions of the ledger (the migrations in ``migrations/`` must agree, a test checks).

The JSON columns hold the exact canonical bytes (RFC 8785) that were hashed and signed; the
other columns are an index over them, re-checked against the JSON on every read.
"""

from __future__ import annotations

from sqlalchemy import (
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
    Column("height", Integer, primary_key=True, autoincrement=False),
    Column("hash", String(64), nullable=False, unique=True),
    Column("prev", String(64), nullable=False),
    Column("time", Integer, nullable=False),
    Column("proposer", String(64), nullable=False),
    Column("header", Text, nullable=False),
    Column("commit", Text, nullable=True),
)

txs = Table(
    "txs",
    metadata,
    Column("hash", String(64), primary_key=True),
    Column("height", Integer, ForeignKey("blocks.height"), nullable=False),
    Column("idx", Integer, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("author", String(64), nullable=False),
    Column("body", Text, nullable=False),
    UniqueConstraint("height", "idx", name="uq_txs_height_idx"),
)

Index("ix_txs_kind", txs.c.kind)
Index("ix_txs_author", txs.c.author)
