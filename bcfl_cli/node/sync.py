"""Catching up: pull decided blocks from peers, verify each fully, append, and watch for forks.

Every block from a peer goes through exactly what ``bcfl verify-chain --deep`` applies:
``ChainState.apply`` (header, commit certificate against the validator set in force, every
transaction rule) with the FL deep checks (contract verdicts and aggregates recomputed), after
the update blobs it references were fetched and hash-checked. Only then is it appended. A member
that trains but does not validate (without ``--verify-updates``) fetches the block's models
instead and takes the certified verdicts and aggregates as they are (``BlobScope``).

Catching up runs a page of blocks at a time: the update blobs of the whole page are fetched in
the background (a few at a time, in block order) while the blocks are verified one after the
other, each on the state its predecessor produced; the verified blocks are appended together
(``LocalChain.accept_blocks``: one database transaction) at the end of the page, at the first block
that fails, and at least every ``APPEND_EVERY_S``. A block that fails, or whose blobs cannot be
had, is not appended, nor is anything after it. A member that takes the quorum's word reads no
blob in the rules, so its blocks are verified while their models download, and each waits for
its models before it is appended. A pass that has reason to think this node is behind (its
first, or a peer last seen ahead) asks for the first page together with the peers' status, and
uses it only once that status shows the peer ahead on this genesis.

The genesis hash is pinned: a peer whose genesis differs is never followed. If a peer serves, at
a height we already hold, a *different* block with a valid commit certificate, two quorums signed
conflicting blocks (a safety violation: more than a third of the power is Byzantine). The node
then stops following anyone, writes both blocks to ``HOME/node/alarm.json`` as evidence, and
reports the alarm in ``/v1/status`` and in its log, instead of choosing one.

Each pass that appends blocks logs where its seconds went (``caught up``: ``PassTimes``), so that
the transport (block pages and update blobs downloaded, hash-checked and on disk) can be told
from the re-verification (every rule and FL deep check, on the worker thread).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from bcfl_cli.chain.checks import AppChecks, VerdictLike
from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import EncodingError, NodeError, VerificationError
from bcfl_cli.node.blob_service import BLOB_FETCH_TIMEOUT_S, BlobScope, blob_owners
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.interfaces import BlobFetcher, BlobIndex, CommittingChain, Gossip, Worker
from bcfl_cli.node.logging import fields
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.protocol.block import Block, CommitCertificate, ValidatorSet
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.wire.refusal import Refusal

log = logging.getLogger("bcfl.node.sync")

BLOCKS_PER_REQUEST = 100
SYNC_INTERVAL_S = 1.0
#: While this node's own consensus commits blocks (one within LIVE_WINDOW_S), it is not behind:
#: peers' status is polled this often instead (a poll is one request to every peer, and with
#: ten nodes on two cores the polls were a tenth of each node's CPU). A message from two or more
#: heights ahead wakes the loop at once (``behind``).
LIVE_SYNC_INTERVAL_S = 4.0
LIVE_WINDOW_S = 3.0
MAX_BLOCKS_PER_PASS = 2_000
MAX_PASS_S = 30.0
CHECK_CACHE = 4_096
#: Blob downloads running at once ahead of the verification of a page of blocks.
PREFETCH_BLOBS = 4
#: The same for a member that takes the quorum's word: a page's models (one a round) all start
#: together up to this many, so that the last does not download alone after the others (at 1m
#: and 10m a catch-up of 5 rounds waited on its fifth model by itself: a fifth of its time).
PREFETCH_MODELS = 8
#: Verified blocks are appended at least this often while a page is being verified.
APPEND_EVERY_S = 1.0
#: Update blobs a verifying node's prefetch may hold (or be downloading) that no verified block
#: has used yet: below the 64 summaries a node keeps (``fl/update_summary.py``), so an update
#: summarised as it downloaded still has its summary when its block is checked, whatever the
#: page's size (a 100-block page of ten members holds ~90 updates).
PREFETCH_AHEAD = 32


@dataclass
class PassTimes:
    """Where one catch-up pass's seconds went (the figures of its ``caught up`` log line).

    Transport and re-verification overlap (a page's blobs download while its blocks are
    verified), so they do not add up to the pass (which starts with the peers' status requests,
    the first page going out with them): ``transport_s`` runs from the pass's start to
    the moment its last block page or update blob was held, ``verify_s`` is the time spent in
    ``ChainState.apply`` (every rule and FL deep check), ``blob_wait_s`` the time verification
    stood waiting for a block's blobs, ``append_s`` the time spent appending.
    """

    started: float = field(default_factory=time.monotonic)
    blocks: int = 0
    pages: int = 0
    blobs: int = 0
    blob_bytes: int = 0
    last_byte_at: float | None = None
    verify_s: float = 0.0
    blob_wait_s: float = 0.0
    append_s: float = 0.0

    def landed(self, now: float | None = None) -> None:
        """A page or a blob of this pass is held now."""
        self.last_byte_at = time.monotonic() if now is None else now

    def fetched(self, blocks: list[Block], held: BlobIndex, scope: BlobScope) -> None:
        """Count the blobs of ``blocks`` this node needs (``scope``) and does not hold yet."""
        for block in blocks:
            for digest, size in _claimed_sizes(block, scope).items():
                if not held.has(digest):
                    self.blobs += 1
                    self.blob_bytes += size

    @property
    def transport_s(self) -> float:
        return 0.0 if self.last_byte_at is None else self.last_byte_at - self.started

    def fields(self) -> dict[str, Any]:
        return fields(
            blocks=self.blocks,
            pages=self.pages,
            blobs=self.blobs,
            blob_bytes=self.blob_bytes,
            seconds=round(time.monotonic() - self.started, 4),
            transport_s=round(self.transport_s, 4),
            verify_s=round(self.verify_s, 4),
            blob_wait_s=round(self.blob_wait_s, 4),
            append_s=round(self.append_s, 4),
        )


class CachingChecks:
    """``AppChecks`` that remembers answers, so a verdict or aggregate is computed once.

    A verdict depends on the update and on the round context it is judged in, so that context
    is part of the key; an aggregate check is remembered only when it passed, keyed by what it
    depends on (base model, accepted set, claimed model and size). ``cached_only`` answers from
    memory or raises, for the proposer, which must never compute on the event loop.
    """

    def __init__(self, inner: AppChecks) -> None:
        self.inner = inner
        self._verdicts: OrderedDict[Hashable, VerdictLike] = OrderedDict()
        self._aggregates: OrderedDict[Hashable, bool] = OrderedDict()
        #: each round's aggregate (model, size) by its inputs, as this node computed it: by a
        #: proposal's check that passed or by the round preparation, whichever ran first
        self._computed: OrderedDict[Hashable, tuple[str, int]] = OrderedDict()

    @staticmethod
    def update_key(state: ChainState, tx: Transaction) -> Hashable:
        rnd = state.round
        return (
            tx.hash,
            rnd.number,
            rnd.open,
            rnd.base_model,
            tx.author in rnd.submitted,
            tx.author in state.trainers,
        )

    @staticmethod
    def aggregate_key(state: ChainState, model: str, size: int) -> Hashable:
        rnd = state.round
        return (rnd.number, rnd.base_model, tuple(rnd.accepted_hashes), model, size)

    @staticmethod
    def inputs_key(state: ChainState) -> Hashable:
        """What the open round's aggregate is computed from (the genesis fixes the rule)."""
        rnd = state.round
        return (rnd.number, rnd.base_model, tuple(rnd.accepted_hashes))

    def known_verdict(self, state: ChainState, tx: Transaction) -> VerdictLike | None:
        return self._verdicts.get(self.update_key(state, tx))

    def check_update(self, state: ChainState, tx: Transaction) -> VerdictLike:
        key = self.update_key(state, tx)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = self.inner.check_update(state, tx)
            _remember(self._verdicts, key, verdict)
        return verdict

    def check_aggregate(self, state: ChainState, tx: Transaction) -> None:
        model, size = tx.body["model"], tx.body["model_size"]
        key = self.aggregate_key(state, model, size)
        if key in self._aggregates:
            return
        self.inner.check_aggregate(state, tx)
        _remember(self._aggregates, key, True)
        _remember(self._computed, self.inputs_key(state), (model, size))

    def note_aggregate(self, state: ChainState, model: str, size: int) -> None:
        """The proposer computed this aggregate itself with the same code: remember it passed."""
        _remember(self._aggregates, self.aggregate_key(state, model, size), True)
        _remember(self._computed, self.inputs_key(state), (model, size))

    def known_aggregate(self, state: ChainState) -> tuple[str, int] | None:
        """The open round's aggregate (model, size) if this node computed it already: a
        proposal's check recomputed it with the same code from the same blobs and found these
        (issue 19: the round preparation then does not compute it a second time)."""
        return self._computed.get(self.inputs_key(state))

    def cached_only(self) -> _CachedOnly:
        return _CachedOnly(self)


class _CachedOnly:
    def __init__(self, cache: CachingChecks) -> None:
        self.cache = cache

    def check_update(self, state: ChainState, tx: Transaction) -> VerdictLike:
        verdict = self.cache.known_verdict(state, tx)
        if verdict is None:
            raise NodeError(f"no verdict prepared yet for update {tx.hash[:16]}")
        return verdict

    def check_aggregate(self, state: ChainState, tx: Transaction) -> None:
        key = self.cache.aggregate_key(state, tx.body["model"], tx.body["model_size"])
        if key not in self.cache._aggregates:
            raise NodeError(f"aggregate {tx.body['model'][:16]} not prepared yet")


class PrefetchWindow:
    """How far a page's blob downloads may run ahead of its verification: each download
    takes a place (in block order) and gives it back once a verified block has used its blob.
    The verification never waits on it: a block whose blob the prefetch has not started
    fetches the blob itself (one download of a blob at a time, ``BlobService``)."""

    def __init__(self, ahead: int) -> None:
        self._places = asyncio.Semaphore(max(1, ahead))
        self._taken: set[str] = set()
        self._used: set[str] = set()

    async def enter(self, digest: str) -> bool:
        """Wait for a place for ``digest``; False (no place kept) once a block has used it."""
        await self._places.acquire()
        if digest in self._used:
            self._places.release()
            return False
        self._taken.add(digest)
        return True

    def used(self, digests: list[str]) -> None:
        """A verified block used these blobs: their places go to the next downloads."""
        for digest in digests:
            self._used.add(digest)
            if digest in self._taken:
                self._taken.discard(digest)
                self._places.release()


class EarlyPage:
    """A page request sent before the pass knew whether it needs it (``Syncer._page_early``)."""

    def __init__(self, peer: PeerInfo, start: int, task: asyncio.Task[Any]) -> None:
        self.peer = peer
        self.start = start
        self.task: asyncio.Task[Any] | None = task

    def take(self, peer: PeerInfo, start: int) -> asyncio.Task[Any] | None:
        """The request, once, if it asked ``peer`` for the page from ``start``."""
        task = self.task
        if task is None or peer is not self.peer or start != self.start:
            return None
        self.task = None
        return task

    def drop(self) -> None:
        """Cancel it if unused; its failure, if any, is nobody's business then."""
        task, self.task = self.task, None
        if task is not None:
            task.cancel()
            task.add_done_callback(_forget)


def _forget(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: no "exception was never retrieved" at exit


def _remember(cache: OrderedDict[Hashable, Any], key: Hashable, value: Any) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > CHECK_CACHE:
        cache.popitem(last=False)


class Syncer:
    """The catch-up loop of one node: built from the chain it appends to, the peers it asks,
    the blob fetcher, the checks and the worker that runs them."""

    def __init__(
        self,
        *,
        chain: CommittingChain,
        gossip: Gossip,
        fetcher: BlobFetcher,
        blobs: BlobIndex,
        checks: AppChecks,
        worker: Worker,
        clock: Clock,
        scope: BlobScope | None = None,
    ) -> None:
        self.chain = chain
        self.gossip = gossip
        self.fetcher = fetcher
        self.blobs = blobs
        self.checks = checks
        #: what a block needs fetched and recomputed here (a trainer-only member: its models)
        self.scope = scope if scope is not None else BlobScope(checks, verifies=lambda: True)
        self.worker = worker
        self.clock = clock
        self._wake = asyncio.Event()
        self.blocks_synced = 0
        self.last_pass: PassTimes | None = None
        self._consensus_commit_at = -math.inf
        self._last_pass_at = -math.inf
        self._refreshed = False  # whether a pass has asked the peers' status yet

    def wake(self) -> None:
        self._wake.set()

    def note_consensus_commit(self) -> None:
        """This node's consensus just committed a block: it is keeping up by itself."""
        self._consensus_commit_at = time.monotonic()

    def behind(self) -> None:
        """A peer is heights ahead: pass now, unless a pass ran within the last interval
        (so that messages from ahead, however many, cost at most the usual polling)."""
        if time.monotonic() - self._last_pass_at >= SYNC_INTERVAL_S:
            self._wake.set()

    def interval_s(self) -> float:
        live = time.monotonic() - self._consensus_commit_at < LIVE_WINDOW_S
        return LIVE_SYNC_INTERVAL_S if live else SYNC_INTERVAL_S

    # --- the loop --------------------------------------------------------------------------
    async def run(self) -> None:
        self._wake.set()  # the first pass at once: a node that starts behind catches up now
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s())
            self._wake.clear()
            if self.chain.alarm is not None:
                continue
            self._last_pass_at = time.monotonic()
            try:
                await self.pass_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("sync pass failed")

    async def refresh_peers(self) -> None:
        chain = self.chain

        async def one(peer: PeerInfo) -> None:
            try:
                status = await self.gossip.get(peer, "/v1/status", timeout_s=3.0)
            except Refusal as exc:
                peer.error = exc.message
                return
            if not isinstance(status, dict):
                peer.error = "status is not an object"
                return
            genesis = status.get("genesis")
            if genesis != chain.genesis_hash:
                if not peer.refused:
                    log.warning(
                        "peer has another genesis; never following it",
                        extra=fields(peer=peer.url, genesis=str(genesis)[:64]),
                    )
                peer.refused = True
                peer.error = f"other genesis {str(genesis)[:16]}"
                return
            me = status.get("me")
            peer.did = me.get("did") if isinstance(me, dict) else None
            height, head = status.get("height"), status.get("head")
            peer.height = height if isinstance(height, int) else None
            peer.head = head if isinstance(head, str) else None
            peer.last_seen_ms = self.clock.now_ms()
            peer.error = None

        await asyncio.gather(*(one(p) for p in self.gossip.live()))

    async def pass_once(self) -> None:
        """One bounded catch-up pass: at most MAX_BLOCKS_PER_PASS blocks or MAX_PASS_S seconds."""
        chain = self.chain
        times = PassTimes()  # from the status requests on (the first page may go with them)
        started = times.started
        applied = 0
        early = self._page_early()
        try:
            await self.refresh_peers()
            for peer in sorted(self.gossip.live(), key=lambda p: -(p.height or -1)):
                if peer.height is None:
                    continue
                if peer.height == chain.state.height and peer.head not in (
                    None,
                    chain.state.head_hash,
                ):
                    await self._check_conflict(peer, chain.state.height)
                while (
                    chain.alarm is None
                    and (peer.height or -1) > chain.state.height
                    and applied < MAX_BLOCKS_PER_PASS
                    and time.monotonic() - started < MAX_PASS_S
                ):
                    page = early.take(peer, chain.state.height + 1) if early else None
                    got = await self._pull_from(peer, times, page=page)
                    if got == 0:
                        break
                    applied += got
        finally:
            if early is not None:
                early.drop()
        if applied:
            self.last_pass = times
            log.info("caught up", extra=times.fields())

    def _page_early(self) -> EarlyPage | None:
        """The first page asked for while the status requests are out (one round trip less):
        from the peer last seen furthest ahead of this node, or, on the first pass (nothing
        known yet, a node that just started), from the first peer. Used only if that peer's
        status then shows it ahead and on this genesis, and this node's height has not moved;
        its blocks are verified as any others. None when no peer is known to be ahead: a
        node that keeps up asks for no page it does not need."""
        height = self.chain.state.height
        live = self.gossip.live()
        ahead = [p for p in live if p.height is not None and p.height > height]
        first_pass = not self._refreshed
        self._refreshed = True
        if ahead:
            peer = max(ahead, key=lambda p: p.height or -1)
        elif first_pass and live:
            peer = live[0]
        else:
            return None
        return EarlyPage(peer, height + 1, asyncio.create_task(self._get_page(peer, height + 1)))

    async def _get_page(self, peer: PeerInfo, start: int) -> Any:
        return await self.gossip.get(
            peer, "/v1/blocks", params={"start": start - 1, "limit": BLOCKS_PER_REQUEST}
        )

    async def _pull_from(
        self,
        peer: PeerInfo,
        times: PassTimes | None = None,
        *,
        page: asyncio.Task[Any] | None = None,
    ) -> int:
        """Pull, verify and append one page from ``peer`` (``page``: its request, already out)."""
        times = PassTimes() if times is None else times
        start = self.chain.state.height + 1
        try:
            data = await (page if page is not None else self._get_page(peer, start))
            raw = data["blocks"] if isinstance(data, dict) else None
            if not isinstance(raw, list) or len(raw) > BLOCKS_PER_REQUEST:
                raise EncodingError("blocks answer is not a list of at most 100 blocks")
            blocks = [Block.from_dict(b) for b in raw]
        except (Refusal, EncodingError, KeyError) as exc:
            peer.error = str(exc)
            return 0
        times.pages += 1
        times.landed()
        ahead = [b for b in blocks if b.height >= start]
        times.fetched(ahead, self.blobs, self.scope)
        window = PrefetchWindow(PREFETCH_AHEAD) if self.scope.verifies() else None
        prefetch = asyncio.create_task(
            self._prefetch_blobs(ahead, times, window), name="sync-prefetch"
        )
        try:
            return await self._verify_and_append(peer, start, blocks, times, window)
        finally:
            prefetch.cancel()  # its downloads stop at their next piece (see _fetch_from)
            try:
                await prefetch
            except asyncio.CancelledError:
                pass
            except Exception:  # only a head start: the blocks' own fetches decide
                log.debug("blob prefetch failed", exc_info=True)

    async def _prefetch_blobs(
        self,
        blocks: list[Block],
        times: PassTimes | None = None,
        window: PrefetchWindow | None = None,
    ) -> None:
        """A head start on the blobs of ``blocks``: ``fetch_block_blobs`` (see there)."""
        at_once = PREFETCH_BLOBS if self.scope.verifies() else PREFETCH_MODELS
        await fetch_block_blobs(
            self.fetcher,
            self.blobs,
            blocks,
            times,
            prefer=self.scope.prefer,
            at_once=at_once,
            window=window,
        )

    async def _verify_and_append(
        self,
        peer: PeerInfo,
        start: int,
        blocks: list[Block],
        times: PassTimes,
        window: PrefetchWindow | None = None,
    ) -> int:
        """Verify ``blocks`` in order, each on its predecessor's state; append them in runs.

        A block whose rules read its blobs (the FL checks of a verifying node) waits for them
        before it is verified. Without those checks (a member that takes the quorum's word)
        the rules read no blob: the blocks are verified while their models still download, and
        each block's models are awaited before it is appended (``append_pending``), so that a
        block is never kept without them.
        """
        chain = self.chain
        base = chain.state  # the state the pending blocks build on
        state = base
        #: verified blocks, their states, and whether their blobs are still to be awaited
        pending: list[tuple[Block, ChainState, bool]] = []
        appended = 0
        last_append = time.monotonic()
        #: the states after each block, applied together without the FL checks (or the error
        #: that stopped them), when this node takes the quorum's word
        ahead: dict[int, ChainState | VerificationError] | None = None

        async def append_pending() -> bool:
            """Append what is verified and held; False when the node moved on meanwhile, or
            a block's blobs cannot be had yet (what precedes it is appended, nothing after)."""
            nonlocal base, pending, appended, last_append
            batch, pending = pending, []
            whole = True
            for i, (block, _, unheld) in enumerate(batch):
                if unheld and not await self._hold_blobs(peer, block, times):
                    batch, whole = batch[:i], False
                    break
            last_append = time.monotonic()
            if not batch:
                return whole
            if chain.state is not base:
                return False  # consensus moved on meanwhile; the next pass resumes
            began = time.monotonic()
            chain.accept_blocks([(b, s) for b, s, _ in batch], source=peer.url)
            times.append_s += time.monotonic() - began
            base = chain.state
            appended += len(batch)
            times.blocks += len(batch)
            self.blocks_synced += len(batch)
            return whole

        for block in blocks:
            if block.height < start:
                if block.height == start - 1 and block.hash != chain.head_hash_at(block.height):
                    await self._conflict(peer, block)
                    return 0
                continue
            if block.height != state.height + 1:
                peer.error = f"served block {block.height} out of order"
                break
            checks = self.scope.checks()
            if checks is not None and not await self._hold_blobs(peer, block, times):
                break
            began = time.monotonic()
            try:
                if checks is None and ahead is None:
                    # the rules read no blob: the page's blocks in one call to the worker (one
                    # thread hop there and back, not one a block)
                    ahead = await self.worker.run(partial(_apply_in_order, state, blocks))
                found = ahead.get(block.height) if checks is None and ahead else None
                if isinstance(found, VerificationError):
                    raise found
                if found is not None and found.height == block.height:
                    new_state = found
                else:
                    new_state = await self.worker.run(partial(state.apply, block, checks=checks))
            except VerificationError as exc:
                log.warning(
                    "peer served an invalid block; not following it",
                    extra=fields(
                        peer=peer.url, height=block.height, code=exc.code, reason=exc.message
                    ),
                )
                peer.error = f"invalid block {block.height}: {exc.code}"
                break
            finally:
                times.verify_s += time.monotonic() - began
            if window is not None:
                window.used(self.scope.blobs(block))
            if chain.state is not base or chain.alarm is not None:
                break  # consensus moved on meanwhile (or an alarm): the next pass resumes
            pending.append((block, new_state, checks is None))
            state = new_state
            if time.monotonic() - last_append >= APPEND_EVERY_S and not await append_pending():
                return appended
        await append_pending()
        return appended

    async def _hold_blobs(self, peer: PeerInfo, block: Block, times: PassTimes) -> bool:
        """Wait for the blobs ``block`` needs here (its own fetch, or the prefetch's under way);
        False, logged, when they cannot be had yet (the block is not kept; a later pass
        retries)."""
        scope = self.scope
        began = time.monotonic()
        fetched = await self.fetcher.ensure_blobs(scope.blobs(block), prefer=scope.prefer(block))
        held = fetched and scope.held(self.blobs, block)
        waited = time.monotonic() - began
        times.blob_wait_s += waited
        if waited > 0.001 and held:
            times.landed()  # this block's own fetch (or the prefetch's) just finished
        if not held:
            log.warning(
                "cannot fetch the blobs of block %d yet; will retry",
                block.height,
                extra=fields(peer=peer.url),
            )
        return held

    # --- forks -----------------------------------------------------------------------------
    async def _check_conflict(self, peer: PeerInfo, height: int) -> None:
        try:
            data = await self.gossip.get(peer, "/v1/blocks", params={"start": height, "limit": 1})
            theirs = Block.from_dict(data["blocks"][0])
        except (Refusal, EncodingError, KeyError, IndexError, TypeError):
            return
        if theirs.height == height and theirs.hash != self.chain.head_hash_at(height):
            await self._conflict(peer, theirs)

    async def _conflict(self, peer: PeerInfo, theirs: Block) -> None:
        """``theirs`` differs from our block at its height: an alarm if its certificate holds."""
        chain = self.chain
        height = theirs.height
        if height == 0 or height > chain.state.height or theirs.commit is None:
            return
        ours = chain.block(height)
        validators = chain.validator_set_at(height)
        if ours.hash == theirs.hash or validators is None:
            return
        if not certificate_valid(chain.genesis_hash, theirs, validators):
            log.warning(
                "peer serves a different block without a valid certificate; ignoring it",
                extra=fields(peer=peer.url, height=height),
            )
            peer.error = f"bad block at {height}"
            return
        chain.raise_alarm(height, ours, theirs, source=peer.url)


def _apply_in_order(
    state: ChainState, blocks: list[Block]
) -> dict[int, ChainState | VerificationError]:
    """Apply the blocks that follow ``state`` in order, without the FL checks, on the worker:
    height -> the state after it, up to the first that fails (height -> its error) or does not
    follow. The sync loop takes each in turn as if it had applied it itself."""
    done: dict[int, ChainState | VerificationError] = {}
    for block in blocks:
        if block.height <= state.height:
            continue
        if block.height != state.height + 1:
            break
        try:
            state = state.apply(block, checks=None)
        except VerificationError as exc:
            done[block.height] = exc
            break
        done[block.height] = state
    return done


async def fetch_block_blobs(
    fetcher: BlobFetcher,
    held: BlobIndex,
    blocks: list[Block],
    times: PassTimes | None = None,
    *,
    prefer: Callable[[Block], Mapping[str, str | tuple[str, ...]]] | None = None,
    at_once: int = PREFETCH_BLOBS,
    window: PrefetchWindow | None = None,
) -> None:
    """Fetch the blobs of ``blocks`` that ``held`` lacks, ``at_once`` at a time, in block
    order, each from the nodes ``prefer`` names first (default: every update blob, from its
    author's node; a node's ``BlobScope.prefer`` names what that node needs).

    Only a head start: the verification loop asks for each block's blobs itself (and waits on
    a download under way rather than starting another), so a failure here costs nothing but
    the time. ``bench/sync_bench.py`` runs it alone to time the transport without verification.
    ``window``: how far ahead of the verification it may run (``PrefetchWindow``).
    """
    owners: dict[str, str | tuple[str, ...]] = {}
    for block in blocks:
        owners.update(prefer(block) if prefer is not None else blob_owners(list(block.txs)))
    missing = [d for d in owners if not held.has(d)]
    if not missing:
        return
    slots = asyncio.Semaphore(max(1, at_once))

    async def one(digest: str) -> None:
        if window is not None and not await window.enter(digest):
            return  # a verified block used it already: fetched by the verification itself
        async with slots:
            got = await fetcher.ensure_blobs(
                [digest], timeout_s=BLOB_FETCH_TIMEOUT_S, prefer={digest: owners[digest]}
            )
        if got and times is not None:
            times.landed()

    await asyncio.gather(*(one(d) for d in missing))


def _claimed_sizes(block: Block, scope: BlobScope) -> dict[str, int]:
    """The blobs ``block`` needs here (``scope``), with the size its transactions claim."""
    if scope.verifies():
        return {
            tx.body["blob"]: int(tx.body["blob_size"])
            for tx in block.txs
            if tx.kind is TxKind.UPDATE
        }
    return {
        tx.body["model"]: int(tx.body["model_size"])
        for tx in block.txs
        if tx.kind is TxKind.AGGREGATE
    }


def certificate_valid(chain: str, block: Block, validators: ValidatorSet) -> bool:
    cert = block.commit
    if not isinstance(cert, CommitCertificate):
        return False
    if cert.height != block.height or cert.block != block.hash:
        return False
    return validators.has_quorum(cert.signed_power(chain, validators))
