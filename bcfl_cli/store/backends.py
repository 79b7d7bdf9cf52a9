"""The ledger's two SQL backends: what differs between SQLite and PostgreSQL, and nothing else.

``Ledger`` speaks SQLAlchemy Core and asks its ``Backend`` for the few things that the two
databases do differently: the settings every connection carries, how a JSON field of a stored
transaction is read in SQL, and how a ``create`` that failed half-way is undone. The
append-only triggers of both live in the Alembic migrations (``migrations/versions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import JSON, ColumnElement, Engine, cast, create_engine, event, func
from sqlalchemy.engine import make_url

from bcfl_cli.errors import StoreError

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


#: Seconds a PostgreSQL connection attempt may take before the command fails with a message
#: (libpq's default is to wait for ever on an unreachable host).
POSTGRES_CONNECT_TIMEOUT_S = 10


class Backend(Protocol):
    """One database engine behind the ledger."""

    name: str

    def make_engine(self, url: str) -> Engine:
        """An engine whose every connection carries the settings the ledger relies on."""
        ...

    def json_field(self, column: Any, *path: str) -> ColumnElement[Any]:
        """The value at ``path`` inside the JSON text of ``column`` (None where absent)."""
        ...

    def discard_failed_create(self, url: str) -> None:
        """Remove what a ``Ledger.create`` that failed left behind."""
        ...


class SQLiteBackend:
    """The default: one file in the home, WAL, ``synchronous=FULL`` (``db.SQLITE_PRAGMAS``)."""

    name = "sqlite"

    def make_engine(self, url: str) -> Engine:
        engine = create_engine(url)
        event.listen(engine, "connect", apply_sqlite_settings)
        return engine

    def json_field(self, column: Any, *path: str) -> ColumnElement[Any]:
        return func.json_extract(column, "$." + ".".join(path))

    def discard_failed_create(self, url: str) -> None:
        database = make_url(url).database
        if not database or database == ":memory:":
            return
        for suffix in ("", "-wal", "-shm"):
            Path(f"{database}{suffix}").unlink(missing_ok=True)


class PostgresBackend:
    """PostgreSQL through psycopg 3, for members whose node runs on managed infrastructure.

    Durability is the server's (``fsync``, ``synchronous_commit``: keep their defaults on);
    connections are checked before use, since a managed server closes idle ones.
    """

    name = "postgresql"

    def make_engine(self, url: str) -> Engine:
        try:
            return create_engine(
                url,
                pool_pre_ping=True,
                connect_args={
                    "connect_timeout": POSTGRES_CONNECT_TIMEOUT_S,
                    "application_name": "bcfl",
                },
            )
        except ImportError as exc:  # psycopg comes with the optional `postgres` extra
            raise StoreError(
                "a PostgreSQL store needs the psycopg driver, which is not installed",
                hint="pip install 'bcfl[postgres]'",
            ) from exc

    def json_field(self, column: Any, *path: str) -> ColumnElement[Any]:
        return func.json_extract_path_text(cast(column, JSON), *path)

    def discard_failed_create(self, url: str) -> None:
        """Nothing: PostgreSQL runs the schema and the genesis in one transaction."""


def backend_for(url: str) -> Backend:
    """The backend of ``url`` (checked by ``bcfl_cli.store.location.parse_store_url``)."""
    if make_url(url).get_backend_name() == "postgresql":
        return PostgresBackend()
    return SQLiteBackend()


__all__ = [
    "POSTGRES_CONNECT_TIMEOUT_S",
    "SQLITE_PRAGMAS",
    "Backend",
    "PostgresBackend",
    "SQLiteBackend",
    "apply_sqlite_settings",
    "backend_for",
]
