"""Alembic environment for the bcfl ledger, configured in code (no alembic.ini).

bcfl passes an open connection in ``config.attributes["connection"]`` so that the migration runs
inside the caller's transaction; the URL path exists for the alembic command line.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from bcfl_cli.store.db import make_engine
from bcfl_cli.store.tables import metadata

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("set sqlalchemy.url or pass a connection")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    raise RuntimeError("bcfl migrations run online only")
run_migrations_online()
