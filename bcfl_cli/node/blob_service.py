"""Fetching the blobs a node needs from its peers: the likely holders first, one download of a
blob at a time, each peer given a slice of the deadline so that a hung one cannot use it up.

Consensus (a proposal's update blobs), block sync (a page of blocks) and the round preparation
(pending updates) all ask here; a blob is hash-checked piece by piece (``client.blobs``) before it
is kept.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping

from bcfl_cli.client.blobs import fetch_blob
from bcfl_cli.errors import BcflError
from bcfl_cli.node.interfaces import BlobPeers
from bcfl_cli.node.logging import fields
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.store.blobs import BlobStore

log = logging.getLogger("bcfl.node.sync")

BLOB_FETCH_TIMEOUT_S = 60.0
PEER_BLOB_SLICE_S = 10.0
MAX_FETCH_LOCKS = 1_024


def referenced_blobs(block: Block) -> list[str]:
    """Blobs a validator must hold to judge ``block``: the blobs of its updates."""
    return [tx.body["blob"] for tx in block.txs if tx.kind is TxKind.UPDATE]


def blob_owners(txs: list[Transaction]) -> dict[str, str]:
    """Blob hash -> the did of the update's author (whose node surely holds it)."""
    return {tx.body["blob"]: tx.author for tx in txs if tx.kind is TxKind.UPDATE}


class BlobService:
    """The blob fetcher of one node (implements ``interfaces.BlobFetcher``)."""

    def __init__(
        self, peers: BlobPeers, blobs: BlobStore, *, max_blob_bytes: Callable[[], int]
    ) -> None:
        self.peers = peers
        self.blobs = blobs
        self.max_blob_bytes = max_blob_bytes
        self._fetching: dict[str, asyncio.Lock] = {}
        self.bytes_fetched = 0

    async def ensure_blobs(
        self,
        digests: list[str],
        *,
        timeout_s: float = BLOB_FETCH_TIMEOUT_S,
        prefer: Mapping[str, str | tuple[str, ...]] | None = None,
    ) -> bool:
        """Fetch the missing ones from peers, concurrently; True when all are held.

        ``prefer`` maps a blob to the did (or dids, in order) most likely to hold it (an
        update's author, a proposal's proposer), whose nodes are asked first.
        """
        missing = [d for d in dict.fromkeys(digests) if not self.blobs.has(d)]
        if not missing:
            return True
        results = await asyncio.gather(
            *(self.ensure_one(d, timeout_s, (prefer or {}).get(d)) for d in missing)
        )
        return all(results)

    async def ensure_one(
        self, digest: str, timeout_s: float, owner: str | tuple[str, ...] | None
    ) -> bool:
        """One blob, from the owners' nodes first, then the others (one download at a time)."""
        deadline = time.monotonic() + timeout_s
        owners = (owner,) if isinstance(owner, str) else (owner or ())
        if len(self._fetching) > MAX_FETCH_LOCKS:
            self._fetching = {d: k for d, k in self._fetching.items() if k.locked()}
        lock = self._fetching.setdefault(digest, asyncio.Lock())
        async with lock:
            peers = sorted(
                self.peers.live(),
                key=lambda p: owners.index(p.did) if p.did in owners else len(owners),
            )
            for i, peer in enumerate(peers):
                left = deadline - time.monotonic()
                if self.blobs.has(digest) or left <= 0:
                    break
                # A hung peer (paused, cut off) must not use up the whole deadline: each but
                # the last gets a slice, so a blob its author cannot serve comes from another.
                budget = left if i == len(peers) - 1 else min(left, PEER_BLOB_SLICE_S)
                try:
                    await asyncio.wait_for(self._fetch_from(peer, digest), budget)
                except (TimeoutError, BcflError, OSError) as exc:
                    log.debug("blob %s not from %s: %s", digest[:16], peer.url, exc)
        return self.blobs.has(digest)

    async def _fetch_from(self, peer: PeerInfo, digest: str) -> None:
        limit = self.max_blob_bytes()

        # Given up on (``ensure_one``'s slice ran out, the node stops), the thread is told to
        # stop at its next piece; until then it writes only its own partial file.
        cancel = threading.Event()

        def work() -> None:
            with self.peers.blob_client(peer) as client:
                fetch_blob(client, digest, self.blobs, max_bytes=limit, cancel=cancel)

        try:
            await asyncio.to_thread(work)
        finally:
            cancel.set()
        self.bytes_fetched += self.blobs.size(digest)
        log.info("fetched blob", extra=fields(blob=digest, peer=peer.url))
