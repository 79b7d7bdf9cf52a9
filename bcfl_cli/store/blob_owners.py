"""Who uploaded which blob the chain does not name yet: the record behind upload quotas.

A member's upload quota counts the blobs it sent this node that no block references (see
``bcfl_cli.node.blob_keeper``); the attribution must outlive a restart, or a member could
restart its quota by waiting for one. A tiny stdlib ``sqlite3`` file of its own
(HOME/node/blob_owners.sqlite), like the vote guard: written once per stored upload.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType

from bcfl_cli.errors import StoreError
from bcfl_cli.store.db import apply_sqlite_settings

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
