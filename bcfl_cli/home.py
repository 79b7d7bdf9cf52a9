"""Where a member's files live. ``--home`` (or BCFL_HOME) lets several members share a machine.

Layout::

    HOME/identity.key      encrypted Ed25519 key (0600)
    HOME/chain.sqlite      the ledger (SQLite, WAL)
    HOME/pin.json          the genesis and highest verified head, outside the ledger
    HOME/blobs/ab/ab...    content-addressed tensors
    HOME/node/             node state (vote guard, peers, logs)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import platformdirs


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
    def store_url(self) -> str:
        return f"sqlite:///{self.store_file}"

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
