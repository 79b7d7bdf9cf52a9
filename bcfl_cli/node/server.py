"""The long-running peer: one asyncio loop with the HTTP server and the node's services.

``Node`` is wiring only (CometBFT's ``node/setup.go``): it builds each service from exactly what
it needs (the interfaces of ``interfaces.py``), connects their signals (commit notifications of
``LocalChain``, wake-ups), starts and stops them. ``serve`` runs uvicorn (the Starlette app of
``app.py``) beside the consensus reactor, block sync, the round preparation, the blob keeper and
the per-peer outboxes; SIGINT/SIGTERM stop it gracefully (tasks cancelled, stores closed). After
a SIGKILL the next start replays the store and the vote guard restores the engine's lock, so
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
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing
import uvicorn
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp

from bcfl_cli.apps.runner import bind_app
from bcfl_cli.chain.state import ChainState
from bcfl_cli.consensus.messages import TimeoutConfig
from bcfl_cli.errors import NodeError
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.fl.update_summary import UpdateSummaries
from bcfl_cli.home import Home, HomeLock
from bcfl_cli.identity import Identity
from bcfl_cli.node.app import (
    MAX_CONSENSUS_BODY,
    REPLAY_JOURNAL,
    STREAM_QUEUE,
    HttpSettings,
    advertised_authorities,
    create_app,
)
from bcfl_cli.node.blob_keeper import DEFAULT_RETENTION_S, BlobKeeper, default_quota
from bcfl_cli.node.blob_service import BlobScope, BlobService
from bcfl_cli.node.clock import Clock, collection_clock
from bcfl_cli.node.connections import ConnectionGuard, guarded_protocols, node_guard
from bcfl_cli.node.consensus_driver import ConsensusDriver
from bcfl_cli.node.interfaces import BlockListener
from bcfl_cli.node.limits import NodeLimits
from bcfl_cli.node.local_chain import LocalChain
from bcfl_cli.node.logging import fields, resident_mb
from bcfl_cli.node.mempool import Mempool, MempoolService
from bcfl_cli.node.peers import Peers
from bcfl_cli.node.round_preparation import RoundPreparation
from bcfl_cli.node.sync import CachingChecks, Syncer
from bcfl_cli.node.tls import TlsOptions, follow_chain
from bcfl_cli.node.traffic import BlobTraffic
from bcfl_cli.node.trainer import run_node_trainer, warm_up
from bcfl_cli.node.worker import ThreadWorker
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.store.blob_owners import BlobOwners
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.scratch import sweep_scratch
from bcfl_cli.store.vote_guard import VoteGuard
from bcfl_cli.wire.urls import normalise_url

log = logging.getLogger("bcfl.node")

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
    #: --verify-updates: fetch every update and recompute every verdict and aggregate even
    #: when not a validator (a validator always does); else a member that only trains fetches
    #: each round's model alone and takes the validators' certified aggregate (issue 19)
    verify_updates: bool = False

    @property
    def url(self) -> str:
        scheme = "https" if self.tls.serve else "http"
        return self.advertise or f"{scheme}://{self.host}:{self.port}"


class Node:
    """A member's peer, as wiring: each service built from exactly what it needs, then started
    and stopped together (see the module docstring). Nothing here decides anything."""

    def __init__(self, home: Home, identity: Identity, options: NodeOptions) -> None:
        self.home = home
        self.options = options
        self.did = identity.did
        clock = Clock()
        self.chain = LocalChain(home)
        self.ledger = self.chain.ledger
        self.blobs = self.chain.blobs
        self.genesis_hash = self.chain.genesis_hash
        #: what the blob routes computed of each update received, read by the checks
        self.summaries = UpdateSummaries()
        self.checks = CachingChecks(FLChecks(self.blobs, summaries=self.summaries))
        self._worker = ThreadWorker()
        self.guard = VoteGuard.for_home(home)
        self.tls = options.tls.transport(home, identity.signing_key, self.chain.state)
        self.traffic = BlobTraffic(lambda: self.chain.state.round.number)
        self.scope = BlobScope(
            self.checks,
            verifies=lambda: options.verify_updates or not _trains_only(self.chain.state, self.did),
        )
        self.peers = Peers(
            identity.signing_key,
            list(options.peers),
            self_url=options.url,
            trust=self.tls,
            traffic=self.traffic,
        )
        self.mempool = Mempool()
        self.pool = MempoolService(self.mempool, self.chain, self.peers, did=self.did, clock=clock)
        self.fetcher = BlobService(
            self.peers,
            self.blobs,
            max_blob_bytes=lambda: self.chain.state.config.contract.max_blob_bytes,
            summaries=self.summaries,
            summarise=self.scope.verifies,
        )
        self.syncer = Syncer(
            chain=self.chain,
            gossip=self.peers,
            fetcher=self.fetcher,
            blobs=self.blobs,
            checks=self.checks,
            worker=self._worker,
            clock=clock,
            scope=self.scope,
        )
        self.preparation = RoundPreparation(
            chain=self.chain,
            pool=self.pool,
            checks=self.checks,
            blobs=self.blobs,
            fetcher=self.fetcher,
            worker=self._worker,
            key=identity.signing_key,
            did=self.did,
            clock=clock,
        )
        self.driver = ConsensusDriver(
            chain=self.chain,
            pool=self.pool,
            prepared=self.preparation,
            fetcher=self.fetcher,
            blobs=self.blobs,
            gossip=self.peers,
            sync=self.syncer,
            checks=self.checks,
            worker=self._worker,
            guard=self.guard,
            key=identity.signing_key,
            clock=clock,
            timeouts=options.timeouts,
            empty_block_interval_s=options.empty_block_interval_s,
            empty_blocks=options.empty_blocks,
            heartbeat_interval_s=options.heartbeat_interval_s,
            scope=self.scope,
        )
        self.keeper = self._blob_keeper(self.preparation.blobs_in_flight)
        # the signals between services: a new transaction, a prepared verdict, a commit
        self.pool.on_added += [self.preparation.wake, self.driver.poke]
        self.preparation.on_prepared.append(self.driver.poke)
        self.chain.on_commit += [
            self.scope.on_commit,
            self.pool.on_commit,
            self.keeper.on_commit,
            lambda _block: self.preparation.wake(),
            lambda _block: self.driver.poke(),
            lambda _block: follow_chain(self.tls, self.chain.state, home, identity.signing_key),
        ]
        self.trainer_host = _TrainerHost(
            identity.signing_key, self.chain, self.pool, self.peers, self.summaries
        )
        self._tasks: list[asyncio.Task[Any]] = []
        log.info(
            "node opened",
            extra=fields(
                home=str(home.root),
                did=self.did,
                height=self.chain.state.height,
                genesis=self.genesis_hash,
            ),
        )

    @property
    def state(self) -> ChainState:
        return self.chain.state

    def _blob_keeper(self, in_flight: Callable[[], set[str]]) -> BlobKeeper:
        """Upload quotas and the collection of blobs no block references (blob_keeper)."""
        self.home.node_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        config = self.chain.state.config
        quota = self.options.blob_quota_bytes
        clock = collection_clock(self.options.host)
        if quota is None:
            model = config.initial_model
            model_bytes = self.blobs.size(model) if self.blobs.has(model) else None
            quota = default_quota(config.contract.max_blob_bytes, model_bytes)
        return BlobKeeper.for_ledger(
            self.ledger,
            BlobOwners.for_home(self.home),
            genesis_blobs=(self.chain.genesis.header.config, config.initial_model),
            quota_bytes=quota,
            retention_s=self.options.blob_retention_s,
            in_flight=in_flight,
            clock=clock.time,
            sleep=clock.sleep,
        )

    def http_app(self) -> ASGIApp:
        """The HTTP app, given what its routes read and feed."""
        options = self.options
        return create_app(
            chain=self.chain,
            ledger=self.ledger,
            pool=self.pool,
            keeper=self.keeper,
            peers=self.peers,
            reactor=self.driver,
            did=self.did,
            tls=self.tls,
            traffic=self.traffic,
            unverified_rounds=self.scope.unverified_rounds,
            summaries=self.summaries,
            settings=HttpSettings(
                limits=options.limits,
                host=options.host,
                port=options.port,
                advertise=options.advertise,
                replay_journal=self.home.node_dir / REPLAY_JOURNAL,
            ),
        )

    # --- life cycle -------------------------------------------------------------------------
    def start_background(self) -> None:
        self.peers.start_outboxes()
        for name, coro in (
            ("sync", self.syncer.run()),
            ("consensus", self.driver.run()),
            ("prepare", self.preparation.run()),
            ("blobs", self.keeper.run()),
        ):
            self.add_task(name, coro)

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
        self.chain.flush_pin()  # the blocks appended since the last write
        try:
            await asyncio.wait_for(self.peers.close(), CLOSE_GRACE_S)
        except Exception as exc:  # a timeout included: closing sockets must not hold the exit
            log.warning("peer connections not closed cleanly: %r", exc)
        await self._worker.stop(CLOSE_GRACE_S)
        self.guard.close()
        self.keeper.owners.close()
        self.chain.close()
        log.info("node stopped", extra=fields(height=self.chain.state.height))

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


@dataclass(frozen=True)
class _TrainerHost:
    """What ``bcfl node --train``'s trainer gets of the node (``interfaces.TrainerHost``)."""

    key: nacl.signing.SigningKey
    chain: LocalChain
    pool: MempoolService
    peers: Peers
    #: the node's update summaries: the trainer's push summarises its own update into them
    summaries: UpdateSummaries | None = None

    @property
    def state(self) -> ChainState:
        return self.chain.state

    @property
    def blobs(self) -> BlobStore:
        return self.chain.blobs

    @property
    def on_commit(self) -> list[BlockListener]:
        return self.chain.on_commit

    def submit(self, tx: Transaction, *, seen: frozenset[str] = frozenset()) -> bool:
        return self.pool.submit(tx, seen=seen)


def _trains_only(state: ChainState, did: str) -> bool:
    """An active member that trains and does not validate: it needs each round's model, not
    the others' updates (``BlobScope``). Any other node (a validator, a node catching up before
    its admission, a member with neither role) fetches and recomputes everything."""
    member = state.member(did)
    return member is not None and member.active and member.is_trainer and not member.is_validator


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
    advertised_authorities(options.host, options.port, options.advertise)  # before any work
    node = Node(home, identity, options)
    # what a crash left in tmp/; through Starlette's thread pool (anyio), whose backend module
    # would otherwise be imported by the first blob chunk a round receives (0.3-0.6 s of one
    # round's push, issue 19)
    await run_in_threadpool(sweep_scratch, node.blobs.root)
    if options.train is not None:
        # before serving: round 1 then costs what others do (the app bound as the trainer will)
        config = node.chain.state.config
        app = await asyncio.to_thread(bind_app, config.model, config.training, options.app)
        await asyncio.to_thread(warm_up, app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    tls = node.tls.server_context() if options.tls.serve else None
    server = _Server(http_config(node.http_app(), options.host, options.port, tls=tls))
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
            trainer = run_node_trainer(
                node.trainer_host,
                options.train,
                stop,
                attack=options.attack,
                seed=options.train_seed,
                app_folder=options.app,
            )
            node.add_task("trainer", trainer)
        log.info(
            "listening",
            extra=fields(url=options.url, peers=[p.url for p in node.peers], rss_mb=resident_mb()),
        )
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
