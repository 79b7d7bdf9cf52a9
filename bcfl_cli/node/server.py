"""The long-running peer: one asyncio loop with the HTTP server and the node's background tasks.

``Node`` holds everything a member's peer knows (ledger, chain state, mempool, peers, caches)
and is the single place where a decided block is appended (``accept_block``), whether consensus
decided it here or the sync loop verified it from a peer. ``serve`` runs uvicorn (the Starlette
app of ``app.py``) beside the consensus driver, the sync loop, the round preparation and the
per-peer outboxes; SIGINT/SIGTERM stop it gracefully (tasks cancelled, stores closed). After a
SIGKILL the next start replays the store and the vote guard restores the engine's lock, so
nothing signed is ever signed differently.
"""

from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import json
import logging
import os
import signal
import ssl
import sys
import threading
from collections.abc import Callable, Generator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import uvicorn

from bcfl_cli.chain.chain import Chain, Commit, Persisted
from bcfl_cli.chain.state import ChainState
from bcfl_cli.consensus.messages import TimeoutConfig
from bcfl_cli.errors import NodeError, StoreError
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.home import Home, HomeLock
from bcfl_cli.identity import Identity
from bcfl_cli.node.blob_keeper import DEFAULT_RETENTION_S, BlobKeeper, default_quota
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.connections import ConnectionGuard, guarded_protocols, node_guard
from bcfl_cli.node.consensus_driver import ConsensusDriver
from bcfl_cli.node.limits import (
    JOIN_RELAY_BURST,
    JOIN_RELAY_RATE_PER_S,
    NodeLimits,
    TokenBucketLimiter,
)
from bcfl_cli.node.logging import fields
from bcfl_cli.node.mempool import Mempool, MempoolRefusal
from bcfl_cli.node.peers import Peers
from bcfl_cli.node.round_driver import (
    AggregateKey,
    compute_aggregate,
    has_content,
    has_work,
    needs_heartbeat,
    pending_updates,
    plan_block,
    updates_still_arriving,
)
from bcfl_cli.node.sync import CachingChecks, Syncer, blob_owners
from bcfl_cli.node.tls import TlsOptions, follow_chain
from bcfl_cli.protocol.block import Block, ValidatorSet
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.store.blob_owners import BlobOwners
from bcfl_cli.store.pin import PinKeeper
from bcfl_cli.store.vote_guard import VoteGuard
from bcfl_cli.wire.urls import normalise_url

log = logging.getLogger("bcfl.node")

T = TypeVar("T")

NODE_FILE = "node.json"
#: Seconds between empty blocks while the open round's deadline is counted in blocks only
#: (``bcfl node --heartbeat-interval``); no other idle state makes blocks.
DEFAULT_HEARTBEAT_S = 60.0
CLOSE_GRACE_S = 5.0  # per stage of a shutdown (tasks, peer connections, the worker)


@dataclass(frozen=True)
class NodeOptions:
    host: str = "127.0.0.1"
    port: int = 7420
    peers: tuple[str, ...] = ()
    advertise: str | None = None
    limits: NodeLimits = field(default_factory=NodeLimits)
    timeouts: TimeoutConfig = field(default_factory=TimeoutConfig)
    empty_block_interval_s: float = 1.0
    #: --empty-blocks: an empty block every interval while idle (the demo's and tests' pace);
    #: else blocks only with something in them, and heartbeats where a deadline needs heights
    empty_blocks: bool = False
    heartbeat_interval_s: float = DEFAULT_HEARTBEAT_S  # --heartbeat-interval
    train: Path | None = None  # --train PART.csv: train and submit each round
    attack: str | None = None  # --attack NAME (demo and tests only)
    train_seed: int | None = None  # --train-seed S (None: random at each start)
    app: Path | None = None  # --app FOLDER: the model app's folder (None: installed packages)
    blob_retention_s: float | None = DEFAULT_RETENTION_S  # --blob-retention (None: keep all)
    blob_quota_bytes: int | None = None  # --blob-quota-mib (None: from the genesis)
    tls: TlsOptions = field(default_factory=TlsOptions)  # --tls, --ca-bundle, ... (issue 22)

    @property
    def url(self) -> str:
        scheme = "https" if self.tls.serve else "http"
        return self.advertise or f"{scheme}://{self.host}:{self.port}"


class Node:
    """A member's peer: state, stores and background work (see module docstring)."""

    def __init__(self, home: Home, identity: Identity, options: NodeOptions) -> None:
        self.home = home
        self.identity = identity
        self.options = options
        self.key = identity.signing_key
        self.did = identity.did
        self.clock = Clock()
        self.chain = Chain.open(home)  # the one replay from genesis, and the alarm file
        self.ledger = self.chain.ledger
        self.blobs = self.ledger.blobs
        self.document = self.chain.document
        self.genesis = self.chain.genesis
        self.genesis_hash = self.genesis.hash
        self.pin = self._open_pin()
        self.checks = CachingChecks(FLChecks(self.blobs))
        self.mempool = Mempool()
        self.keeper = self._blob_keeper()
        self._join_relay = TokenBucketLimiter(JOIN_RELAY_RATE_PER_S, JOIN_RELAY_BURST, max_keys=1)
        self.tls = options.tls.transport(home, self.key, self.state)
        self.peers = Peers(self.key, list(options.peers), self_url=options.url, trust=self.tls)
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcfl-worker")
        self.syncer = Syncer(self)
        self.guard = VoteGuard.for_home(home)
        self.driver = ConsensusDriver(
            self,
            self.guard,
            timeouts=options.timeouts,
            empty_block_interval_s=options.empty_block_interval_s,
            empty_blocks=options.empty_blocks,
            heartbeat_interval_s=options.heartbeat_interval_s,
        )
        self._aggregates: dict[AggregateKey, tuple[str, int]] = {}
        # this node's validations signed while planning, reused by later plans (plan_block)
        self._validations: dict[tuple[str, str, str, str], Transaction] = {}
        self._prepare_wake = asyncio.Event()
        self._advanced = asyncio.Event()  # set, then replaced, on each appended block
        self._computing = False
        self._tasks: list[asyncio.Task[Any]] = []
        self.on_commit: list[Callable[[Block], None]] = [self.keeper.on_commit]
        self.on_commit.append(lambda _: follow_chain(self.tls, self.state, home, self.key))
        self.chain.subscribe(self._adopt_appended)
        log.info(
            "node opened",
            extra=fields(
                home=str(home.root),
                did=self.did,
                height=self.state.height,
                genesis=self.genesis_hash,
            ),
        )

    # --- the chain (chain/chain.py holds the state, the head and the alarm) ------------------
    @property
    def state(self) -> ChainState:
        return self.chain.state

    @property
    def head(self) -> Block:
        return self.chain.head

    @property
    def alarm(self) -> dict[str, Any] | None:
        return self.chain.alarm

    @alarm.setter
    def alarm(self, value: dict[str, Any] | None) -> None:
        self.chain.alarm = value

    # --- start-up -------------------------------------------------------------------------
    def _open_pin(self) -> PinKeeper:
        """The home's pin (genesis, highest verified head): a store it says was replaced or
        rewritten is refused; a shorter one starts and syncs back (``bcfl_cli.store.pin``)."""
        keeper = PinKeeper(
            self.home.pin_file,
            self.genesis_hash,
            self.state.height,
            lambda height: self.ledger.block(height).hash,
        )
        if keeper.pin is None:
            log.warning(
                "no pin in this home (made before pins): pinning the store's genesis and head "
                "on first use",
                extra=fields(pin=str(self.home.pin_file), height=self.state.height),
            )
        if keeper.behind:
            log.warning(
                "the store is %d blocks below the head pinned in this home (truncated or "
                "restored from an older copy); syncing them back from peers",
                keeper.behind,
                extra=fields(pin=str(self.home.pin_file), height=self.state.height),
            )
        self._flush_pin(keeper)
        return keeper

    def _flush_pin(self, keeper: PinKeeper) -> None:
        try:
            keeper.flush()
        except StoreError as exc:  # a full disk must not stop the chain; the pin catches up
            log.warning("cannot move the pin forward: %s", exc.message)

    def _note_pin(self, block: Block) -> None:
        """After the block's database transaction committed: the pin never runs ahead."""
        try:
            self.pin.note(block.height, block.hash)
        except StoreError as exc:
            log.warning("cannot move the pin forward: %s", exc.message)

    def _blob_keeper(self) -> BlobKeeper:
        """Upload quotas and the collection of blobs no block references (blob_keeper)."""
        self.home.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = self.state.config
        quota = self.options.blob_quota_bytes
        if quota is None:
            quota = default_quota(config.contract.max_blob_bytes)
        return BlobKeeper.for_ledger(
            self.ledger,
            BlobOwners.for_home(self.home),
            genesis_blobs=(self.genesis.header.config, config.initial_model),
            quota_bytes=quota,
            retention_s=self.options.blob_retention_s,
            in_flight=self._blobs_in_flight,
        )

    def _blobs_in_flight(self) -> set[str]:
        """Blobs no block names yet that this node still needs: pending updates' and the
        aggregates being prepared."""
        pending = {tx.body["blob"] for tx in self.mempool.snapshot() if tx.kind is TxKind.UPDATE}
        return pending | {model for model, _ in self._aggregates.values()}

    # --- queries --------------------------------------------------------------------------
    def is_member(self, did: str) -> bool:
        member = self.state.member(did)
        return member is not None and member.active

    def head_hash_at(self, height: int) -> str | None:
        """Hash of our block at ``height`` (None above the head)."""
        return self.chain.head_hash_at(height)

    def validator_set_at(self, height: int) -> ValidatorSet | None:
        return self.chain.validator_set_at(height)

    @property
    def role(self) -> str:
        member = self.state.member(self.did)
        if member is None or not member.active:
            return "observer"
        return "validator" if member.is_validator else "member"

    # --- transactions ---------------------------------------------------------------------
    def submit(self, tx: Transaction, *, seen: frozenset[str] = frozenset()) -> bool:
        """Into the mempool (MempoolRefusal if it cannot be held); gossiped when new.

        ``seen``: tags (``peers.did_tag``) of members that hold it already, who are skipped.
        """
        relay = True
        if tx.kind is TxKind.JOIN_REQUEST and tx.hash not in self.mempool:
            # strangers' join requests are relayed within a node-wide budget (limits.py); past
            # it a validator keeps the request to propose it, another node would only hold it
            relay = not self._join_relay.acquire("join")
            if not relay and self.role != "validator":
                raise MempoolRefusal(
                    "this node relays join requests at a bounded rate and is busy; retry in a "
                    "few seconds, or send the request to a validator's node",
                    code="join_relay_busy",
                    status=503,
                )
        added = self.mempool.add(tx, self.state, now_ms=self.clock.now_ms())
        if added:
            if relay:
                self.peers.broadcast("/v1/txs", {"tx": tx.to_dict()}, seen=seen)
            self.wake_prepare()
            self.driver.poke()
        return added

    def drop_from_mempool(self, tx_hash: str, code: str) -> None:
        self.mempool.remove([tx_hash])
        self.mempool._remember_rejected(tx_hash, code)

    # --- blocks ---------------------------------------------------------------------------
    def accept_block(self, block: Block, new_state: ChainState, *, source: str) -> None:
        """Append a decided, verified ``block`` whose state after is ``new_state``.

        Under a safety alarm nothing more is appended: the node stops following the chain
        until an operator has looked at the evidence (docs: what to do on a safety alarm).
        """
        outcome = self.chain.persist(block, new_state, source=source)
        if outcome is Persisted.HALTED:
            log.error(
                "not appending block %d: a safety alarm is raised",
                block.height,
                extra=fields(source=source),
            )
            return
        if outcome is Persisted.FORKED:
            self._log_alarm()
        if outcome is not Persisted.APPENDED:
            return
        self._note_pin(block)
        if source == "consensus":
            self.syncer.note_consensus_commit()

    def accept_blocks(self, decided: Sequence[tuple[Block, ChainState]], *, source: str) -> None:
        """``accept_block`` for consecutive blocks (sync): appended in one database transaction.

        Each pair is a block and the state after it, verified in order on top of the head.
        """
        if len(decided) <= 1 or self.alarm is not None:
            for block, new_state in decided:
                self.accept_block(block, new_state, source=source)
            return
        self.chain.persist_many(decided, source=source)
        self._note_pin(decided[-1][0])

    def _adopt_appended(self, commit: Commit) -> None:
        """The chain's commit notification: mempool, log, callbacks, wake-ups."""
        block, new_state, source = commit.block, commit.state, commit.source
        finishes = new_state.plan_finished and not commit.previous.plan_finished
        self.mempool.remove(tx.hash for tx in block.txs)
        self.mempool.prune(new_state)
        rnd = new_state.round
        log.info(
            "committed",
            extra=fields(
                height=block.height,
                block=block.hash,
                txs=len(block.txs),
                source=source,
                round=rnd.number,
                round_state=rnd.state,
                accepted=len(rnd.accepted),
            ),
        )
        if finishes:  # once: the block whose aggregate closes the plan's last round
            log.info(
                "training plan finished",
                extra=fields(
                    rounds=rnd.number,
                    height=block.height,
                    time=block.header.time,
                    model=rnd.model,
                ),
            )
        for callback in self.on_commit:
            callback(block)
        self._advanced.set()
        self._advanced = asyncio.Event()
        self.wake_prepare()
        self.driver.poke()

    async def wait_for_round(self, number: int, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, until this node's chain has reached FL round ``number``.

        A peer that commits a block a moment before this node trains on the round it opens and
        sends its update at once; waiting for the same commit here costs milliseconds, where a
        refusal costs the update's trip (the blob goes again on its own, the transaction comes
        back by gossip or in a proposal, to be checked on the proposal's critical path).
        Polled as well as woken: a block appended outside the event loop (tests) still counts.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.state.round.number < number:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), min(remaining, 0.05))
        return True

    def on_synced(self) -> None:
        self.driver.poke()

    def raise_alarm(self, height: int, ours: Block, theirs: Block, *, source: str) -> None:
        message = self.chain.raise_alarm(height, ours, theirs, source=source)
        log.critical(message, extra=fields(height=height, blocks=[ours.hash, theirs.hash]))

    def _log_alarm(self) -> None:
        alarm = self.alarm or {}
        log.critical(
            alarm.get("message", "SAFETY ALARM"),
            extra=fields(height=alarm.get("height"), blocks=alarm.get("blocks")),
        )

    # --- the round driver's preparation -------------------------------------------------------
    def prepared_verdict(self, tx: Transaction) -> Any:
        return self.checks.known_verdict(self.state, tx)

    def prepared_aggregate(self, state: ChainState) -> tuple[str, int] | None:
        return self._aggregates.get(AggregateKey.of(state))

    def has_work(self, height: int) -> bool:
        return self._ask_round_driver(has_work, height)

    def has_content(self, height: int) -> bool:
        """Whether a block proposed now would hold anything (``round_driver.has_content``)."""
        return self._ask_round_driver(has_content, height)

    def _ask_round_driver(self, question: Callable[..., bool], height: int) -> bool:
        """``has_work`` / ``has_content`` of the round driver, on this node's state and pool;
        only a validator that is not busy preparing proposes at all."""
        if self.role != "validator" or self._computing:
            return False
        return question(
            self.state,
            self.mempool.snapshot(),
            height=height,
            now_ms=self.clock.now_ms(),
            verdict_of=self.prepared_verdict,
            aggregate_of=self.prepared_aggregate,
            has_blob=self.blobs.has,
        )

    def needs_heartbeat(self) -> bool:
        """Whether the open round's deadline needs heights to grow (``needs_heartbeat``)."""
        return needs_heartbeat(self.state)

    def updates_still_arriving(self) -> int | None:
        """The open round's updates in the mempool, while others are still expected."""
        return updates_still_arriving(self.state, self.mempool.snapshot())

    def wake_prepare(self) -> None:
        self._prepare_wake.set()

    async def _prepare_loop(self) -> None:
        """Compute verdicts of pending updates and the due aggregate, off the event loop."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._prepare_wake.wait(), 2.0)
            self._prepare_wake.clear()
            if self.role != "validator" or self.alarm is not None:
                continue
            try:
                await self._prepare_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("round preparation failed")

    async def _prepare_once(self) -> None:
        state = self.state
        todo = [
            tx
            for tx in pending_updates(state, self.mempool.snapshot())
            if self.checks.known_verdict(state, tx) is None
        ]
        owners = blob_owners(todo)
        await self.syncer.ensure_blobs(list(owners), timeout_s=30.0, prefer=owners)
        # While verdicts and the aggregate they complete are computed (CPU only, every blob
        # here), ``has_work`` waits: a block proposed between the last verdict and its
        # aggregate would cost a height more for the aggregate alone.
        self._computing = True
        try:
            for tx in todo:
                if self.state is not state:
                    return
                if not self.blobs.has(tx.body["blob"]):
                    continue
                # Each update on its own: one whose check fails (a corrupt local copy, a bug
                # the contract does not turn into a verdict) stays without a verdict, so it
                # is left out of blocks and the round closes at its deadline without it; the
                # others still get theirs, and the aggregate below is still prepared.
                try:
                    verdict = await self.run_worker(partial(self.checks.check_update, state, tx))
                except Exception:
                    log.exception("checking update %s failed; left out", tx.hash[:16])
                    continue
                log.info(
                    "update checked",
                    extra=fields(update=tx.hash, accept=verdict.accept, reason=verdict.reason),
                )
            missing: list[str] = []
            for target in self._aggregates_wanted(state):
                if self.state is not state:
                    return
                blobs = [u.blob for u in target.round.accepted]
                if not all(self.blobs.has(b) for b in blobs):
                    missing += blobs
                    continue
                model, size = await self.run_worker(partial(compute_aggregate, target, self.blobs))
                self._aggregates[AggregateKey.of(target)] = (model, size)
                self.checks.note_aggregate(target, model, size)
                while len(self._aggregates) > 8:
                    self._aggregates.pop(next(iter(self._aggregates)))
                log.info(
                    "aggregate prepared",
                    extra=fields(round=target.round.number, model=model, updates=len(blobs)),
                )
        finally:
            self._computing = False
            self.driver.poke()
        if missing and await self.syncer.ensure_blobs(missing, timeout_s=60.0):
            self.wake_prepare()  # compute it on the next pass, now that the blobs are here

    def _aggregates_wanted(self, state: ChainState) -> list[ChainState]:
        """The round states whose aggregate our next proposal would carry, not prepared yet.

        Asked of ``plan_block`` itself, so that what is prepared is exactly what it would
        propose: the open round's aggregate once it is due, or the aggregate that would follow
        the pending updates (with their verdicts) in the same block.
        """
        wanted: list[ChainState] = []

        def want(target: ChainState) -> tuple[str, int] | None:
            prepared = self.prepared_aggregate(target)
            if prepared is None:
                wanted.append(target)
            return prepared

        plan_block(
            state,
            self.mempool.snapshot(),
            height=state.height + 1,
            key=self.key,
            now_ms=max(self.clock.now_ms(), state.head_time + 1),
            verdict_of=self.prepared_verdict,
            aggregate_of=want,
            has_blob=self.blobs.has,
            signed=self._validations,
        )
        return wanted

    # --- threads ----------------------------------------------------------------------------
    async def run_worker(self, fn: Callable[[], T]) -> T:
        """Run CPU-heavy ``fn`` on the node's single worker thread (one at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self._worker, fn)

    # --- life cycle -------------------------------------------------------------------------
    def start_background(self) -> None:
        self.peers.start_outboxes()
        for name, coro in (
            ("sync", self.syncer.run()),
            ("consensus", self.driver.run()),
            ("prepare", self._prepare_loop()),
            ("blobs", self.keeper.run()),
        ):
            self._tasks.append(asyncio.create_task(_guarded(name, coro), name=name))

    def add_task(self, name: str, coro: Any) -> None:
        self._tasks.append(asyncio.create_task(_guarded(name, coro), name=name))

    async def close(self) -> None:
        """Stop the background work, then close the stores; every wait is bounded.

        A task that ignores its cancellation, or a check still running in the worker, is
        logged (with where it is stuck) and left behind after CLOSE_GRACE_S: a stopping node
        must exit promptly (an operator's SIGTERM, a supervisor's restart), and nothing left
        running writes to the stores (the worker only reads; blobs are written atomically).
        """
        self.driver.close()
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=CLOSE_GRACE_S)
            for task in stuck:
                frames = [f"{f.f_code.co_filename}:{f.f_lineno}" for f in task.get_stack()]
                log.warning(
                    "background task %s did not stop within %.0f s; leaving it",
                    task.get_name(),
                    CLOSE_GRACE_S,
                    extra=fields(stack=frames),
                )
        self._flush_pin(self.pin)  # the blocks appended since the last write
        try:
            await asyncio.wait_for(self.peers.close(), CLOSE_GRACE_S)
        except Exception as exc:  # a timeout included: closing sockets must not hold the exit
            log.warning("peer connections not closed cleanly: %r", exc)
        self._worker.shutdown(wait=False, cancel_futures=True)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CLOSE_GRACE_S
        while any(t.is_alive() for t in self._worker_threads()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if any(t.is_alive() for t in self._worker_threads()):
            log.warning("a check is still running in the worker; closing the stores anyway")
        self.guard.close()
        self.keeper.owners.close()
        self.ledger.close()
        log.info("node stopped", extra=fields(height=self.state.height))

    def _worker_threads(self) -> list[threading.Thread]:
        return [t for t in threading.enumerate() if t.name.startswith("bcfl-worker")]

    def write_node_file(self) -> None:
        self.home.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        info = {
            "url": normalise_url(self.options.url),
            "listen": f"{self.options.host}:{self.options.port}",
            "peers": [p.url for p in self.peers],
            "did": self.did,
            "pid": os.getpid(),
            "tls": self.options.tls.serve,  # commands then call the listen address over https
        }
        (self.home.node_dir / NODE_FILE).write_text(json.dumps(info, indent=1), encoding="utf-8")


async def _guarded(name: str, coro: Any) -> None:
    try:
        await coro
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background task %s crashed", name)
        raise


async def _serve_http(server: uvicorn.Server) -> None:
    """uvicorn exits the process (SystemExit) when it cannot bind: keep that inside the task."""
    try:
        await server.serve()
    except SystemExit as exc:
        log.error("the HTTP server stopped: exit status %s", exc.code)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the node handles SIGINT/SIGTERM itself."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


STREAM_PING_S = 20.0


def http_config(
    app: Any,
    host: str,
    port: int,
    guard: ConnectionGuard | None = None,
    tls: ssl.SSLContext | None = None,
) -> uvicorn.Config:
    """How a node serves HTTP.

    Through uvicorn's httptools and sans-I/O WebSocket protocols, subclassed to report every
    connection to ``guard`` (``connections.py``: a deadline for each request head, caps per
    address and in all). uvicorn's own ``limit_concurrency`` (503 for everyone once that many
    sockets are open, half-open ones included) sits above the guard's total, as a backstop only.

    ``proxy_headers`` is off: uvicorn would otherwise take the client address from
    ``X-Forwarded-For`` on connections from 127.0.0.1, so that on a machine of several nodes (the
    demo, tests) any local peer could claim any address and slip past the per-address rate
    limit; a node behind a reverse proxy sees the proxy's address instead.
    """
    from bcfl_cli.node.app import MAX_CONSENSUS_BODY, STREAM_QUEUE

    guard = node_guard() if guard is None else guard
    http_protocol, ws_protocol = guarded_protocols(guard)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=http_protocol,
        log_config=None,
        access_log=False,
        proxy_headers=False,
        timeout_keep_alive=5,
        timeout_graceful_shutdown=3,
        limit_concurrency=guard.max_total + 64,
        lifespan="off",
        server_header=False,
        # the peer stream (``/v1/stream``): a frame is one consensus message or small update,
        # bounded as its POST body is; nothing is compressed (no inflation bomb); a peer that
        # stops answering pings is dropped
        ws=ws_protocol,
        ws_max_size=MAX_CONSENSUS_BODY,
        ws_max_queue=STREAM_QUEUE,
        ws_per_message_deflate=False,
        ws_ping_interval=STREAM_PING_S,
        ws_ping_timeout=STREAM_PING_S,
        # HTTPS with the node's own context (node/tls.py: TLS 1.3, reloaded on rotation)
        ssl_context_factory=None if tls is None else (lambda _config, _default: tls),
    )


async def serve(home: Home, identity: Identity, options: NodeOptions) -> None:
    """Run the node until SIGINT/SIGTERM, holding the home's lock (one node per home; a
    second start fails with NodeError before it opens the ledger or writes anything)."""
    with HomeLock.acquire(home):
        await _serve(home, identity, options)


async def _serve(home: Home, identity: Identity, options: NodeOptions) -> None:
    """Run the node until SIGINT/SIGTERM; everything is closed on the way out."""
    from bcfl_cli.node.app import advertised_authorities, create_app

    advertised_authorities(options.host, options.port, options.advertise)  # before any work
    node = Node(home, identity, options)
    if options.train is not None:
        from bcfl_cli.node.trainer import warm_up

        await asyncio.to_thread(warm_up)  # before serving: round 1 then costs what others do
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tls = node.tls.server_context() if options.tls.serve else None
    server = _Server(http_config(create_app(node), options.host, options.port, tls=tls))
    server_task = asyncio.create_task(_serve_http(server), name="http")
    try:
        while not server.started:
            if server_task.done():
                raise NodeError(
                    f"cannot serve on {options.host}:{options.port} (see the log above)",
                    hint="is another node already listening there? choose --listen HOST:PORT",
                )
            await asyncio.sleep(0.02)
        node.write_node_file()
        node.start_background()
        if options.train is not None:
            from bcfl_cli.node.trainer import run_node_trainer

            trainer = run_node_trainer(
                node,
                options.train,
                stop,
                attack=options.attack,
                seed=options.train_seed,
                app_folder=options.app,
            )
            node.add_task("trainer", trainer)
        log.info("listening", extra=fields(url=options.url, peers=[p.url for p in node.peers]))
        stop_task = asyncio.create_task(stop.wait())
        await asyncio.wait({server_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
        stop_task.cancel()
    finally:
        log.info("shutting down")
        # if the shutdown ever hangs, leave every thread's stack in the log to say where
        faulthandler.dump_traceback_later(4 * CLOSE_GRACE_S, file=sys.stderr)
        try:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server_task, CLOSE_GRACE_S)
            await node.close()
        finally:
            faulthandler.cancel_dump_traceback_later()


def iter_peers(values: list[str]) -> Iterator[str]:
    for value in values:
        for part in value.split(","):
            if part.strip():
                yield part.strip()


__all__ = ["Node", "NodeOptions", "http_config", "iter_peers", "serve"]
