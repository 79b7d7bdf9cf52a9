"""Who uploaded which blob the chain does not name yet: the record behind upload quotas.

A member's upload quota counts the blobs it sent this node that no block references (see
``bcfl_cli.node.blob_keeper``); the attribution must outlive a restart, or a member could
restart its quota by waiting for one. A tiny stdlib ``sqlite3`` file of its own
(HOME/node/blob_owners.sqlite), like the vote guard: written once per stored upload; beside a
PostgreSQL ledger, a table of that database (``PostgresBlobOwners``), like the vote guard too.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from bcfl_cli.errors import StoreError
from bcfl_cli.home import Home
from bcfl_cli.store.backends import PostgresBackend
from bcfl_cli.store.db import apply_sqlite_settings
from bcfl_cli.store.location import home_store_url, is_sqlite, redact

#: The SQLite file's name in HOME/node/.
BLOB_OWNERS_FILE = "blob_owners.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS owned (
    hash  TEXT    PRIMARY KEY,
    owner TEXT    NOT NULL,
    size  INTEGER NOT NULL,
    time  REAL    NOT NULL
);
"""


class BlobOwners:
    def __init__(self, path: Path | str) -> None:
        try:
            self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
            apply_sqlite_settings(self._db)
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(
                f"cannot open the blob owners record {path}: {exc}",
                hint="check the permissions of HOME/node/",
            ) from exc

    @classmethod
    def for_home(cls, home: Home) -> BlobOwners:
        """The home's record: beside its ledger in PostgreSQL, else HOME/node/blob_owners.sqlite."""
        url = home_store_url(home)
        if not is_sqlite(url):
            return PostgresBlobOwners(url)
        home.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        return cls(home.node_dir / BLOB_OWNERS_FILE)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> BlobOwners:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def record(self, digest: str, owner: str, size: int, time: float) -> None:
        """``owner`` stored ``digest``; the first uploader keeps it."""
        try:
            self._db.execute(
                "INSERT INTO owned (hash, owner, size, time) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (hash) DO NOTHING",
                (digest, owner, size, time),
            )
        except sqlite3.Error as exc:
            raise StoreError(f"blob owners write failed: {exc}") from exc

    def forget(self, digests: Iterable[str]) -> None:
        rows = [(d,) for d in digests]
        if not rows:
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany("DELETE FROM owned WHERE hash = ?", rows)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise StoreError(f"blob owners write failed: {exc}") from exc

    def all(self) -> list[tuple[str, str, int, float]]:
        """Every (hash, owner, size, time) recorded."""
        try:
            rows = self._db.execute("SELECT hash, owner, size, time FROM owned").fetchall()
        except sqlite3.Error as exc:
            raise StoreError(f"blob owners read failed: {exc}") from exc
        return [(str(h), str(o), int(s), float(t)) for h, o, s, t in rows]


class PostgresBlobOwners(BlobOwners):
    """The same record as a table of the ledger's PostgreSQL database."""

    def __init__(self, url: str) -> None:  # not the SQLite file: no super().__init__
        self._engine = PostgresBackend().make_engine(url)
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    text(
                        "CREATE TABLE IF NOT EXISTS blob_owners (hash TEXT PRIMARY KEY, "
                        "owner TEXT NOT NULL, size BIGINT NOT NULL, time DOUBLE PRECISION "
                        "NOT NULL)"
                    )
                )
        except SQLAlchemyError as exc:
            self._engine.dispose()
            raise StoreError(
                f"cannot open the blob owners record in {redact(url)}: {exc}",
                hint="the node's database role must be able to create tables",
            ) from exc

    def close(self) -> None:
        self._engine.dispose()

    def record(self, digest: str, owner: str, size: int, time: float) -> None:
        try:
            with self._engine.begin() as conn:
                conn.execute(
                    text(
                        "INSERT INTO blob_owners (hash, owner, size, time) VALUES "
                        "(:hash, :owner, :size, :time) ON CONFLICT (hash) DO NOTHING"
                    ),
                    {"hash": digest, "owner": owner, "size": size, "time": time},
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"blob owners write failed: {exc}") from exc

    def forget(self, digests: Iterable[str]) -> None:
        rows = [{"hash": d} for d in digests]
        if not rows:
            return
        try:
            with self._engine.begin() as conn:
                conn.execute(text("DELETE FROM blob_owners WHERE hash = :hash"), rows)
        except SQLAlchemyError as exc:
            raise StoreError(f"blob owners write failed: {exc}") from exc

    def all(self) -> list[tuple[str, str, int, float]]:
        try:
            with self._engine.connect() as conn:
                rows: list[Any] = list(
                    conn.execute(text("SELECT hash, owner, size, time FROM blob_owners"))
                )
        except SQLAlchemyError as exc:
            raise StoreError(f"blob owners read failed: {exc}") from exc
        return [(str(h), str(o), int(s), float(t)) for h, o, s, t in rows]
