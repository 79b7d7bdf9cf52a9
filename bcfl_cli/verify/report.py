"""What verify-chain found: counts, and the first fault with its height, transaction and code."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from bcfl_cli.errors import VerificationError


@dataclass(frozen=True)
class Fault:
    height: int | None
    tx: str | None
    code: str
    message: str

    @classmethod
    def from_error(cls, exc: VerificationError) -> Fault:
        return cls(exc.height, exc.tx_hash, exc.code, exc.message)

    def to_error(self) -> VerificationError:
        return VerificationError(self.message, height=self.height, tx_hash=self.tx, code=self.code)


@dataclass
class Report:
    chain_id: str = ""
    height: int = -1  # the last height that verified (-1: not even genesis)
    head: str = ""  # hash of the block at ``height``
    stored_height: int = -1  # the store's head, which may be above ``height`` when a fault stops
    deep: bool = False
    #: --models-only: a store that may lack other members' update blobs (a trainer-only member)
    models_only: bool = False
    #: rounds whose verdicts and aggregate were not recomputed, their update blobs not being in
    #: this store (only with ``models_only``; their hashes, signatures and models were checked)
    unverified_rounds: list[int] = field(default_factory=list)
    blocks: int = 0
    txs: int = 0
    tx_kinds: dict[str, int] = field(default_factory=dict)
    signatures: int = 0
    blobs: int = 0
    elapsed_s: float = 0.0
    fault: Fault | None = None
    #: What the chain was checked against from outside the store (§8.6): one row per anchor,
    #: {"anchor": genesis|head|peer, "source", "height", "hash", "ok": true|false|null}.
    anchors: list[dict[str, Any]] = field(default_factory=list)
    #: What became of HOME/pin.json: "checked", "advanced", "created" (trust on first use),
    #: "not used" (--no-pin), or "" (library call without a home).
    pin: str = ""

    @property
    def ok(self) -> bool:
        return self.fault is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ok"] = self.ok
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data
