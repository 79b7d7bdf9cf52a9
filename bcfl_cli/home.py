"""Where a member's files live. ``--home`` (or BCFL_HOME) lets several members share a machine.

Layout::

    HOME/identity.key      encrypted Ed25519 key (0600)
    HOME/chain.sqlite      the ledger (SQLite, WAL), unless HOME/store.url names another
    HOME/store.url         the ledger's SQLAlchemy URL when it is not chain.sqlite (0600: it may
                           hold a database password); written by ``--store-url``
    HOME/pin.json          the genesis and highest verified head, outside the ledger
    HOME/blobs/ab/ab...    content-addressed tensors
    HOME/node/             node state (vote guard, peers, logs)
    HOME/node/node.lock    held (flock) by the one node process running on this home
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import platformdirs

from bcfl_cli.errors import NodeError

if sys.platform != "win32":
    import fcntl


@dataclass(frozen=True)
class Home:
    root: Path

    @classmethod
    def resolve(cls, home: Path | None) -> Home:
        root = home if home is not None else Path(platformdirs.user_data_dir("bcfl", "bcfl"))
        return cls(root.expanduser().resolve())

    def ensure(self) -> Home:
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        return self

    @property
    def key_file(self) -> Path:
        return self.root / "identity.key"

    @property
    def store_file(self) -> Path:
        return self.root / "chain.sqlite"

    @property
    def store_url_file(self) -> Path:
        return self.root / "store.url"

    @property
    def store_url(self) -> str:
        """The URL recorded in ``store.url`` (e.g. PostgreSQL), else the home's SQLite file.

        Read on each use, so that a command finds the store an earlier one recorded; checked
        and recorded by ``bcfl_cli.store.location``.
        """
        try:
            recorded = self.store_url_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            recorded = ""
        return recorded or f"sqlite:///{self.store_file}"

    @property
    def has_ledger(self) -> bool:
        """Whether this home has (or names) a ledger: its SQLite file, or a recorded URL."""
        return self.store_file.exists() or self.store_url_file.exists()

    @property
    def pin_file(self) -> Path:
        """The trust anchor verify-chain checks the ledger against (``bcfl_cli.store.pin``)."""
        return self.root / "pin.json"

    @property
    def blob_dir(self) -> Path:
        return self.root / "blobs"

    @property
    def node_dir(self) -> Path:
        return self.root / "node"

    @property
    def lock_file(self) -> Path:
        return self.node_dir / "node.lock"


class HomeLock:
    """An exclusive OS lock on a home, held for the life of the node process that runs on it.

    Two nodes on one home would both append to one ledger, sign with one vote guard and
    overwrite each other's ``node/node.json``: the second start must fail before it opens
    anything. ``flock`` on ``node/node.lock`` is released by the kernel when the holder exits,
    however it exits (SIGKILL and power loss included), so a crash never leaves a stale lock
    for an operator to clean up; the pid written into the file only serves the message.
    """

    def __init__(self, home: Home, fd: int) -> None:
        self.home = home
        self._fd: int | None = fd

    @classmethod
    def acquire(cls, home: Home) -> HomeLock:
        """Take the lock without waiting; NodeError (exit 1) naming the holder if it is held."""
        path = home.lock_file
        try:
            home.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as exc:
            raise NodeError(
                f"cannot open the lock file {path}: {exc.strerror}",
                hint="the node runs as the user that owns its home",
            ) from exc
        if sys.platform != "win32":
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
                os.close(fd)
                raise NodeError(
                    f"another bcfl node (pid {holder or 'unknown'}) is running on the home "
                    f"{home.root}",
                    hint="stop it first (SIGTERM), or give this node its own --home",
                ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        return cls(home, fd)

    def release(self) -> None:
        """Give the lock up (closing the file releases it); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> HomeLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
