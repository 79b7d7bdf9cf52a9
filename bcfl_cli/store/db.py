"""Engines for the ledger: the SQLite settings every connection must carry.

A committed block must survive a power loss (``synchronous=FULL``), append-only triggers must
also fire for the hidden DELETE of ``INSERT OR REPLACE`` (``recursive_triggers=ON``), and the
schema must not run functions planted in it (``trusted_schema=OFF``). SQLAlchemy pools
connections, so the settings go into the ``connect`` event, which runs for each new one.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, create_engine, event

SQLITE_PRAGMAS: tuple[tuple[str, str], ...] = (
    ("journal_mode", "WAL"),
    ("synchronous", "FULL"),
    ("foreign_keys", "ON"),
    ("trusted_schema", "OFF"),
    ("recursive_triggers", "ON"),
    ("busy_timeout", "10000"),
)


def apply_sqlite_settings(dbapi_connection: Any, _record: Any = None) -> None:
    """Set ``SQLITE_PRAGMAS`` on a new DB-API connection (the ledger's, the vote guard's)."""
    cursor = dbapi_connection.cursor()
    try:
        for name, value in SQLITE_PRAGMAS:
            cursor.execute(f"PRAGMA {name}={value}")
    finally:
        cursor.close()


def make_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite connections get the pragmas above on every connect."""
    engine = create_engine(url)
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", apply_sqlite_settings)
    return engine
