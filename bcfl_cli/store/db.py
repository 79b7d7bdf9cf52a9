"""Engines for the ledger; the SQLite settings every connection must carry (``backends``).

A committed block must survive a power loss (``synchronous=FULL``), append-only triggers must
also fire for the hidden DELETE of ``INSERT OR REPLACE`` (``recursive_triggers=ON``), and the
schema must not run functions planted in it (``trusted_schema=OFF``). SQLAlchemy pools
connections, so the settings go into the ``connect`` event, which runs for each new one.
"""

from __future__ import annotations

from sqlalchemy import Engine

from bcfl_cli.store.backends import SQLITE_PRAGMAS, apply_sqlite_settings, backend_for


def make_engine(url: str) -> Engine:
    """An engine for ``url`` with its backend's settings (SQLite: the pragmas above)."""
    return backend_for(url).make_engine(url)


__all__ = ["SQLITE_PRAGMAS", "apply_sqlite_settings", "make_engine"]
