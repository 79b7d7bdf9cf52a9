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
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial

from bcfl_cli.chain.checks import AppChecks
from bcfl_cli.client.blobs import fetch_blob
from bcfl_cli.errors import BcflError
from bcfl_cli.fl.update_summary import StreamedSummary, UpdateSummaries
from bcfl_cli.node.interfaces import BlobIndex, BlobPeers
from bcfl_cli.node.logging import fields
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.store.blobs import BlobStore

log = logging.getLogger("bcfl.node.sync")

BLOB_FETCH_TIMEOUT_S = 60.0
#: Rounds a trainer-only node remembers having closed without recomputing (``/v1/status``).
KEEP_UNVERIFIED_ROUNDS = 64
PEER_BLOB_SLICE_S = 10.0
MAX_FETCH_LOCKS = 1_024
#: Bytes of a download gathered before they are summarised (``SummarySink``): one per download
#: held at once, four downloads at a time.
SUMMARY_PIECE = 4 * 1024 * 1024


def referenced_blobs(block: Block) -> list[str]:
    """Blobs a validator must hold to judge ``block``: the blobs of its updates."""
    return [tx.body["blob"] for tx in block.txs if tx.kind is TxKind.UPDATE]


def model_blobs(block: Block) -> dict[str, int]:
    """The models ``block``'s aggregates commit to, with the size each claims."""
    return {
        tx.body["model"]: tx.body["model_size"] for tx in block.txs if tx.kind is TxKind.AGGREGATE
    }


class BlobScope:
    """What a node fetches and recomputes to import a block (issue 19: bytes per member).

    A validator, or a member started with ``--verify-updates``, *verifies*: it fetches every
    update blob and applies the chain rules with the FL checks (every verdict and aggregate
    recomputed). A member that only trains needs one model a round: it fetches the models the
    block's aggregates commit to (checked against the committed hash and size) and applies the
    chain rules without the FL checks, so it accepts the verdicts and the aggregate that the
    validators' quorum certified. Each of those rounds is noted (``unverified_rounds``, in
    ``/v1/status``; ``bcfl verify-chain --deep`` names them from the missing update blobs).

    Which of the two a node does follows from its options and its role on the chain, never
    from which blobs it happens to hold: the verdict on a block stays a function of the block.
    """

    def __init__(self, checks: AppChecks, *, verifies: Callable[[], bool]) -> None:
        self._checks = checks
        self._verifies = verifies
        self._unverified: OrderedDict[int, None] = OrderedDict()

    def verifies(self) -> bool:
        return self._verifies()

    def checks(self) -> AppChecks | None:
        """The FL checks ``ChainState.apply`` runs for this node (None: the quorum's word)."""
        return self._checks if self._verifies() else None

    def blobs(self, block: Block) -> list[str]:
        """What this node must hold before it applies ``block``."""
        return referenced_blobs(block) if self._verifies() else list(model_blobs(block))

    def prefer(self, block: Block) -> dict[str, str | tuple[str, ...]]:
        """Who most likely holds each of them: the proposer (it held every blob it proposed,
        and a model it computed), then an update's author."""
        proposer = block.header.proposer
        if not self._verifies():
            return dict.fromkeys(model_blobs(block), proposer)
        return {blob: (proposer, author) for blob, author in blob_owners(list(block.txs)).items()}

    def held(self, blobs: BlobIndex, block: Block) -> bool:
        """Whether this node holds the models ``block`` commits to, each of the size committed,
        when it takes them on the quorum's word (True when it verifies: the checks read the
        update blobs and fail on a missing one themselves)."""
        if self._verifies():
            return True
        return all(blobs.has(d) and blobs.size(d) == size for d, size in model_blobs(block).items())

    def on_commit(self, block: Block) -> None:
        """Note the rounds this node closed on the quorum's word (the last ``KEEP_ROUNDS``)."""
        if self._verifies():
            return
        for tx in block.txs:
            if tx.kind is TxKind.AGGREGATE and tx.body["updates"]:
                self._unverified[int(tx.body["round"])] = None
                while len(self._unverified) > KEEP_UNVERIFIED_ROUNDS:
                    self._unverified.popitem(last=False)

    def unverified_rounds(self) -> list[int]:
        return list(self._unverified)


def blob_owners(txs: list[Transaction]) -> dict[str, str]:
    """Blob hash -> the did of the update's author (whose node surely holds it)."""
    return {tx.body["blob"]: tx.author for tx in txs if tx.kind is TxKind.UPDATE}


class BlobService:
    """The blob fetcher of one node (implements ``interfaces.BlobFetcher``)."""

    def __init__(
        self,
        peers: BlobPeers,
        blobs: BlobStore,
        *,
        max_blob_bytes: Callable[[], int],
        whole_first: bool = True,
        summaries: UpdateSummaries | None = None,
        summarise: Callable[[], bool] | None = None,
    ) -> None:
        self.peers = peers
        self.blobs = blobs
        self.max_blob_bytes = max_blob_bytes
        #: each new download tries the whole blob in one request, hashed as it streams, before
        #: a manifest (``fetch_blob``); False: the manifest first, as before issue 21 (the
        #: comparison in bench/sync_bench.py)
        self.whole_first = whole_first
        #: where a download leaves the contract's summary of the update it carried (issue 21):
        #: computed as the bytes stream in, so that the node's check of that update reads
        #: neither the file nor its hash again; only while ``summarise()`` (a node that checks
        #: updates: a trainer-only member fetches models, which nothing summarises)
        self.summaries = summaries
        self.summarise = summarise if summarise is not None else lambda: True
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
                    await asyncio.wait_for(self._fetch_from(peer, digest, budget), budget)
                except (TimeoutError, BcflError, OSError) as exc:
                    log.debug("blob %s not from %s: %s", digest[:16], peer.url, exc)
        return self.blobs.has(digest)

    async def _fetch_from(self, peer: PeerInfo, digest: str, budget_s: float) -> None:
        """One download from ``peer`` in a thread, given ``budget_s`` by ``ensure_one``.

        The thread is bounded too, not only the wait for it: a hung peer (paused, its socket
        still accepting) answers nothing, and a thread blocked on it past its slice would hold
        one of the loop's few executor threads; a few of those and every download, from healthy
        peers too, queued behind them (a paused member stalled another node's catch-up for over
        a minute). So its client waits at most the slice. (An attempt given up on while it
        still waited for a thread never starts: cancelling the wait cancels its work item.)
        """
        limit = self.max_blob_bytes()

        # Given up on (``ensure_one``'s slice ran out, the node stops), the thread is told to
        # stop at its next piece; until then it writes only its own partial file.
        cancel = threading.Event()
        summaries = self.summaries if self.summarise() else None
        sink = None if summaries is None else partial(SummarySink, summaries=summaries)

        def work() -> None:
            with self.peers.blob_client(peer, download=True, timeout_s=budget_s) as client:
                fetch_blob(
                    client,
                    digest,
                    self.blobs,
                    max_bytes=limit,
                    cancel=cancel,
                    whole_first=self.whole_first,
                    sink=sink,
                )

        try:
            await asyncio.to_thread(work)
        finally:
            cancel.set()
        self.bytes_fetched += self.blobs.size(digest)
        log.info("fetched blob", extra=fields(blob=digest, peer=peer.url))


class SummarySink:
    """A download's ``StreamSink``: the contract's summary of the update it carries
    (``fl.update_summary``), kept in ``summaries`` once its bytes hashed to the blob's name:
    the same fact the blob routes keep of an update pushed to this node."""

    def __init__(
        self, size: int, *, summaries: UpdateSummaries, piece: int = SUMMARY_PIECE
    ) -> None:
        self._summary = StreamedSummary(size)
        self._summaries = summaries
        self._piece = piece
        self._pending = bytearray()

    def feed(self, data: bytes) -> None:
        # the stream's pieces (64 KiB) gathered into SUMMARY_PIECE: fewer, longer numpy calls
        # (the GIL taken less often from the worker thread that verifies meanwhile)
        self._pending += data
        if len(self._pending) >= self._piece:
            self._summary.feed(self._pending)
            self._pending = bytearray()

    def finish(self, digest: str) -> None:
        if self._pending:
            self._summary.feed(self._pending)
            self._pending = bytearray()
        found = self._summary.result()
        if found is not None:
            self._summaries.put(digest, found)
