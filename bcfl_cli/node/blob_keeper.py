"""What the blob store keeps: upload quotas per member and the collection of unreferenced blobs.

Any member may store a blob that hashes to its name, whether or not the chain will ever name it,
so without bounds one member could fill a node's disk. Two rules keep it bounded:

- **Quota.** The blobs a member stored here that no block references (``BlobOwners``, across
  restarts) cost it their size (at least one 4 KiB file-system block each), at most
  ``quota_bytes`` and ``MAX_UNREFERENCED_PER_MEMBER`` blobs. A new upload over the quota first
  removes that member's own oldest such blobs that nothing pending needs (an update waiting in
  the mempool, an aggregate being prepared); if that is not enough it is refused
  (``over_quota``). One member's uploads never displace another's. A blob the chain names
  stops counting when its block is committed.
- **Collection.** Every ``interval_s`` a pass looks at 1/16 of the store (16 of the 256 hash
  prefixes, so a pass is bounded work and the whole store is covered every 16 passes) and
  removes the blobs that no block references, nothing pending needs, and nobody stored or
  re-uploaded for ``retention_s`` (None: keep everything). A blob referenced by the chain --
  the genesis document and initial model, the blob and base model of every update (accepted
  or not), every aggregate's model -- is never removed.

Everything runs on the node's event loop, between two blocks: a block committed while a pass
runs is noted before the pass looks at its blobs.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

from bcfl_cli.errors import BcflError, UsageError
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.blob_owners import BlobOwners
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger

log = logging.getLogger("bcfl.node.blobs")

DEFAULT_RETENTION_S = 24 * 3600.0
#: A member's quota, in blobs the size of the model on the chain (and at least 16 MiB).
QUOTA_BLOBS = 4
MIN_QUOTA_BYTES = 16 * 1024 * 1024
#: Room above the model's size for one update: its safetensors header may differ from the
#: model's, and a header is at most 1 MiB (PROTOCOL.md §7).
QUOTA_SLACK_BYTES = 1024 * 1024
MAX_UNREFERENCED_PER_MEMBER = 1024
BLOCK_BYTES = 4096
PREFIXES_PER_PASS = 16
MAX_REMOVALS_PER_PASS = 1024
MAX_INTERVAL_S = 600.0
_PREFIXES = [f"{i:02x}" for i in range(256)]
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])\Z")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_retention(text: str) -> float | None:
    """``--blob-retention``: a duration like ``90s``, ``30m``, ``24h``, ``7d``; ``keep``: None."""
    value = text.strip().lower()
    if value == "keep":
        return None
    match = _DURATION.match(value)
    if match is None:
        raise UsageError(
            f"--blob-retention {text!r}: expected a duration such as 24h, 30m or 7d, or 'keep'"
        )
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds < 60:
        raise UsageError(f"--blob-retention {text!r}: at least 60 s (an upload needs the time)")
    return seconds


def default_quota(max_blob_bytes: int, model_bytes: int | None = None) -> int:
    """A member's quota when ``--blob-quota-mib`` names none: ``QUOTA_BLOBS`` updates of the
    model on the chain (``model_bytes``, the genesis initial model: every update and aggregate
    has its layout), never more than the genesis cap allows.

    Following the model rather than the cap keeps a node with the 1 GiB default cap from
    letting each member park 4 GiB of blobs no block names (issue 19); a node that does not
    know the model's size falls back to the cap.
    """
    per_blob = max_blob_bytes
    if model_bytes is not None:
        per_blob = min(max_blob_bytes, model_bytes + QUOTA_SLACK_BYTES)
    return max(MIN_QUOTA_BYTES, QUOTA_BLOBS * per_blob)


def block_references(block: Block) -> set[str]:
    """The blob hashes ``block``'s transactions name (the same fields as
    ``Ledger.blob_references``)."""
    found: set[str] = set()
    for tx in block.txs:
        if tx.kind is TxKind.UPDATE:
            found |= {tx.body["blob"], tx.body["base_model"]}
        elif tx.kind is TxKind.AGGREGATE:
            found.add(tx.body["model"])
        elif tx.kind is TxKind.OPEN_ROUND:
            found.add(tx.body["base_model"])
    return found


@dataclass
class CollectReport:
    examined: int = 0
    removed: int = 0
    freed_bytes: int = 0


class BlobKeeper:
    """Quotas and collection over one node's blob store (see the module docstring)."""

    def __init__(
        self,
        blobs: BlobStore,
        owners: BlobOwners,
        *,
        referenced: Iterable[str],
        quota_bytes: int,
        retention_s: float | None = DEFAULT_RETENTION_S,
        in_flight: Callable[[], Iterable[str]] = lambda: (),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.blobs = blobs
        self.owners = owners
        self.quota_bytes = quota_bytes
        self.retention_s = retention_s
        self.in_flight = in_flight
        self._clock = clock
        self._sleep = sleep  # the node's clock's: a test's faster clock shortens the passes too
        self.referenced: set[str] = set(referenced)
        self._owned: dict[str, dict[str, tuple[int, float]]] = {}  # owner -> hash -> (cost, t)
        self._owner_of: dict[str, str] = {}
        self._cursor = 0
        stale = []
        for digest, owner, size, at in owners.all():
            if digest in self.referenced:
                stale.append(digest)
            else:
                self._own(owner, digest, size, at)
        owners.forget(stale)

    @classmethod
    def for_ledger(
        cls,
        ledger: Ledger,
        owners: BlobOwners,
        *,
        genesis_blobs: Iterable[str],
        quota_bytes: int,
        retention_s: float | None = DEFAULT_RETENTION_S,
        in_flight: Callable[[], Iterable[str]] = lambda: (),
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> BlobKeeper:
        referenced, _ = ledger.blob_references()
        return cls(
            ledger.blobs,
            owners,
            referenced=referenced | set(genesis_blobs),
            quota_bytes=quota_bytes,
            retention_s=retention_s,
            in_flight=in_flight,
            clock=clock,
            sleep=sleep,
        )

    # --- the chain ---------------------------------------------------------------------------
    def on_commit(self, block: Block) -> None:
        """Note what a committed block references: kept for good, and no one's quota."""
        newly = block_references(block) - self.referenced
        self.referenced |= newly
        freed = [d for d in newly if d in self._owner_of]
        for digest in freed:
            self._disown(digest)
        if freed:
            self._forget(freed)

    # --- quotas ------------------------------------------------------------------------------
    def usage(self, owner: str) -> tuple[int, int]:
        """(bytes charged, blobs) of ``owner``'s unreferenced uploads here."""
        owned = self._owned.get(owner, {})
        return sum(cost for cost, _ in owned.values()), len(owned)

    def admit(self, owner: str, digest: str, size: int) -> str | None:
        """Make room for ``owner`` to store ``digest`` of ``size`` bytes, removing its own oldest
        unneeded unreferenced blobs if it must; a one-line refusal if even that is not enough.
        Nothing is charged for a blob already here or named by the chain."""
        if digest in self.referenced or self.blobs.has(digest):
            return None
        cost = max(size, BLOCK_BYTES)
        used, count = self.usage(owner)
        if used + cost <= self.quota_bytes and count < MAX_UNREFERENCED_PER_MEMBER:
            return None
        needed = set(self.in_flight())
        owned = self._owned.get(owner, {})
        removable = sorted(
            (at, d, c) for d, (c, at) in owned.items() if d not in needed and d != digest
        )
        dropped: list[str] = []
        for _, victim, victim_cost in removable:
            if used + cost <= self.quota_bytes and count < MAX_UNREFERENCED_PER_MEMBER:
                break
            self.blobs.remove(victim)
            self._disown(victim)
            dropped.append(victim)
            used -= victim_cost
            count -= 1
        if dropped:
            self._forget(dropped)
            log.info(
                "removed %d of a member's unreferenced blobs to make room for its upload",
                len(dropped),
                extra={"peer": owner},
            )
        if used + cost <= self.quota_bytes and count < MAX_UNREFERENCED_PER_MEMBER:
            return None
        return (
            f"your blobs here that no block references take {used} bytes ({count} blobs) and "
            f"all are still needed; a blob of {size} bytes would pass this node's quota of "
            f"{self.quota_bytes} bytes ({MAX_UNREFERENCED_PER_MEMBER} blobs)"
        )

    def sent_again(self, digest: str) -> None:
        """A member uploaded a blob this node holds already: its retention restarts now."""
        self.blobs.touch(digest)

    def record(self, owner: str, digest: str, size: int) -> None:
        """``owner`` has just stored ``digest``: charged to it until a block names it."""
        if digest in self.referenced or digest in self._owner_of:
            return
        at = self._clock()
        try:
            self.owners.record(digest, owner, size, at)
        except BcflError as exc:  # the quota is kept in memory all the same
            log.warning("cannot record a blob's uploader: %s", exc.message)
        self._own(owner, digest, size, at)

    def _own(self, owner: str, digest: str, size: int, at: float) -> None:
        self._owned.setdefault(owner, {})[digest] = (max(size, BLOCK_BYTES), at)
        self._owner_of[digest] = owner

    def _disown(self, digest: str) -> None:
        owner = self._owner_of.pop(digest, None)
        if owner is None:
            return
        owned = self._owned.get(owner)
        if owned is not None:
            owned.pop(digest, None)
            if not owned:
                del self._owned[owner]

    def _forget(self, digests: list[str]) -> None:
        try:
            self.owners.forget(digests)
        except BcflError as exc:
            log.warning("cannot update the blob uploaders' record: %s", exc.message)

    # --- collection --------------------------------------------------------------------------
    def collect(self, *, prefixes: int = PREFIXES_PER_PASS) -> CollectReport:
        """One bounded pass over the next ``prefixes`` hash prefixes (see the module docstring)."""
        report = CollectReport()
        if self.retention_s is None:
            return report
        horizon = self._clock() - self.retention_s
        needed = set(self.in_flight())
        removed: list[str] = []
        for _ in range(prefixes):
            prefix = _PREFIXES[self._cursor]
            self._cursor = (self._cursor + 1) % len(_PREFIXES)
            for digest, _size, mtime in self.blobs.hashes_under(prefix):
                report.examined += 1
                if digest in self.referenced or digest in needed or mtime >= horizon:
                    continue
                if len(removed) >= MAX_REMOVALS_PER_PASS:
                    break
                report.freed_bytes += self.blobs.remove(digest)
                report.removed += 1
                removed.append(digest)
                self._disown(digest)
        if removed:
            self._forget(removed)
            log.info(
                "collected %d unreferenced blobs (%d bytes) older than the retention period",
                report.removed,
                report.freed_bytes,
            )
        return report

    @property
    def interval_s(self) -> float:
        """Time between passes: 16 passes cover the store within the retention period."""
        if self.retention_s is None:
            return MAX_INTERVAL_S
        return max(1.0, min(MAX_INTERVAL_S, self.retention_s / 16))

    async def run(self) -> None:
        """Collect for ever (a background task of the node), one prefix at a time between
        other work on the event loop."""
        while True:
            await self._sleep(self.interval_s)
            for _ in range(PREFIXES_PER_PASS):
                try:
                    self.collect(prefixes=1)
                except BcflError as exc:
                    log.warning("blob collection skipped: %s", exc.message)
                except OSError as exc:
                    log.warning("blob collection skipped: %s", exc)
                await asyncio.sleep(0)
