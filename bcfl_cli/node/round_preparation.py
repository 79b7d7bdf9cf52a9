"""Preparing a validator's next proposal: verdicts of pending updates and the aggregate due,
computed off the event loop before the proposal is built.

``round_driver`` decides *what* a block holds (pure functions); this service computes ahead of
time what those decisions need, so that ``propose`` only reads (``verdict_of``,
``aggregate_of``). It is woken by new transactions and commit notifications (``wake``), and
tells the consensus reactor when something is ready (``on_prepared``). While it computes the
verdicts and the aggregate they complete, ``has_work`` answers False: a block proposed between
the last verdict and its aggregate would cost a height more for the aggregate alone.

It signs: ``plan_block`` writes this node's ``validation`` transactions, signed once and reused
by later plans.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from functools import partial

import nacl.signing

from bcfl_cli.chain.checks import VerdictLike
from bcfl_cli.chain.state import ChainState
from bcfl_cli.node.blob_service import blob_owners
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.interfaces import BlobFetcher, ChainView, TxPool, Worker
from bcfl_cli.node.local_chain import member_role
from bcfl_cli.node.logging import fields
from bcfl_cli.node.round_driver import (
    AggregateKey,
    has_content,
    has_work,
    needs_heartbeat,
    plan_block,
    updates_still_arriving,
)
from bcfl_cli.node.sync import CachingChecks
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.training.rounds import compute_aggregate, pending_updates

log = logging.getLogger("bcfl.node")

#: Aggregates kept prepared (each is one model hash and size; the oldest goes first).
PREPARED_AGGREGATES = 8
#: The loop's poll while nothing wakes it.
PREPARE_POLL_S = 2.0


class RoundPreparation:
    """Verdicts and aggregates computed ahead of the proposal (implements
    ``interfaces.PreparedRound``)."""

    def __init__(
        self,
        *,
        chain: ChainView,
        pool: TxPool,
        checks: CachingChecks,
        blobs: BlobStore,
        fetcher: BlobFetcher,
        worker: Worker,
        key: nacl.signing.SigningKey,
        did: str,
        clock: Clock,
    ) -> None:
        self.chain = chain
        self.pool = pool
        self.checks = checks
        self.blobs = blobs
        self.fetcher = fetcher
        self.worker = worker
        self.key = key
        self.did = did
        self.clock = clock
        #: called when a pass ends (verdicts or an aggregate may be ready): the reactor's poke
        self.on_prepared: list[Callable[[], None]] = []
        self.aggregates: dict[AggregateKey, tuple[str, int]] = {}
        # this node's validations signed while planning, reused by later plans (plan_block)
        self._validations: dict[tuple[str, str, str, str], Transaction] = {}
        self._wake = asyncio.Event()
        self.computing = False

    # --- what the proposer reads --------------------------------------------------------------
    def verdict_of(self, tx: Transaction) -> VerdictLike | None:
        return self.checks.known_verdict(self.chain.state, tx)

    def aggregate_of(self, state: ChainState) -> tuple[str, int] | None:
        return self.aggregates.get(AggregateKey.of(state))

    def has_work(self, height: int) -> bool:
        return self._ask_round_driver(has_work, height)

    def has_content(self, height: int) -> bool:
        """Whether a block proposed now would hold anything (``round_driver.has_content``)."""
        return self._ask_round_driver(has_content, height)

    def _ask_round_driver(self, question: Callable[..., bool], height: int) -> bool:
        """``has_work`` / ``has_content`` of the round driver, on the chain's state and the
        pool; only a validator that is not busy preparing proposes at all."""
        state = self.chain.state
        if member_role(state, self.did) != "validator" or self.computing:
            return False
        return question(
            state,
            self.pool.snapshot(),
            height=height,
            now_ms=self.clock.now_ms(),
            verdict_of=self.verdict_of,
            aggregate_of=self.aggregate_of,
            has_blob=self.blobs.has,
        )

    def needs_heartbeat(self) -> bool:
        """Whether the open round's deadline needs heights to grow (``needs_heartbeat``)."""
        return needs_heartbeat(self.chain.state)

    def updates_still_arriving(self) -> int | None:
        """The open round's updates in the mempool, while others are still expected."""
        return updates_still_arriving(self.chain.state, self.pool.snapshot())

    def blobs_in_flight(self) -> set[str]:
        """Blobs no block names yet that this node still needs: pending updates' and the
        aggregates being prepared (the blob keeper keeps them)."""
        pending = {tx.body["blob"] for tx in self.pool.snapshot() if tx.kind is TxKind.UPDATE}
        return pending | {model for model, _ in self.aggregates.values()}

    # --- the loop ----------------------------------------------------------------------------
    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        """Compute verdicts of pending updates and the due aggregate, off the event loop."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), PREPARE_POLL_S)
            self._wake.clear()
            state = self.chain.state
            if member_role(state, self.did) != "validator" or self.chain.alarm is not None:
                continue
            try:
                await self.prepare_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("round preparation failed")

    async def prepare_once(self) -> None:
        chain = self.chain
        state = chain.state
        todo = [
            tx
            for tx in pending_updates(state, self.pool.snapshot())
            if self.checks.known_verdict(state, tx) is None
        ]
        owners = blob_owners(todo)
        await self.fetcher.ensure_blobs(list(owners), timeout_s=30.0, prefer=owners)
        # While verdicts and the aggregate they complete are computed (CPU only, every blob
        # here), ``has_work`` waits: a block proposed between the last verdict and its
        # aggregate would cost a height more for the aggregate alone.
        self.computing = True
        try:
            for tx in todo:
                if chain.state is not state:
                    return
                if not self.blobs.has(tx.body["blob"]):
                    continue
                # Each update on its own: one whose check fails (a corrupt local copy, a bug
                # the contract does not turn into a verdict) stays without a verdict, so it
                # is left out of blocks and the round closes at its deadline without it; the
                # others still get theirs, and the aggregate below is still prepared.
                started = time.perf_counter()
                try:
                    verdict = await self.worker.run(partial(self.checks.check_update, state, tx))
                except Exception:
                    log.exception("checking update %s failed; left out", tx.hash[:16])
                    continue
                log.info(
                    "update checked",
                    extra=fields(
                        update=tx.hash,
                        accept=verdict.accept,
                        reason=verdict.reason,
                        seconds=round(time.perf_counter() - started, 3),
                    ),
                )
            missing: list[str] = []
            for target in self._aggregates_wanted(state):
                if chain.state is not state:
                    return
                blobs = [u.blob for u in target.round.accepted]
                if not all(self.blobs.has(b) for b in blobs):
                    missing += blobs
                    continue
                started = time.perf_counter()
                model, size, reused, cpu = await self.worker.run(partial(self._aggregate, target))
                self.aggregates[AggregateKey.of(target)] = (model, size)
                while len(self.aggregates) > PREPARED_AGGREGATES:
                    self.aggregates.pop(next(iter(self.aggregates)))
                log.info(
                    "aggregate prepared",
                    extra=fields(
                        round=target.round.number,
                        model=model,
                        updates=len(blobs),
                        seconds=round(time.perf_counter() - started, 3),
                        cpu_s=round(cpu, 3),
                        from_check=reused,
                    ),
                )
        finally:
            self.computing = False
            for listener in self.on_prepared:
                listener()
        if missing and await self.fetcher.ensure_blobs(missing, timeout_s=60.0):
            self.wake()  # compute it on the next pass, now that the blobs are here

    def _aggregate(self, target: ChainState) -> tuple[str, int, bool, float]:
        """In the worker: ``target``'s aggregate (model, size, whether a check had it already,
        and the worker thread's CPU seconds for it, logged: on a shared machine the wall time
        of an aggregate says more about the load than about the work).

        The check of a proposal runs on the same single worker. Noted here, before the worker
        takes its next job, the aggregate is known to a proposal's check queued behind this
        job, which otherwise found nothing yet (the event loop had not resumed) and recomputed
        it whole: a node slower than the proposer computed each round's aggregate twice and
        committed seconds late (5.6 s at 25M, where the pair took 6.4 s; issue 19). The other
        order, the check first, leaves its result for this job: the same code on the same
        blobs gave the same model, which the check kept in the store.
        """
        started = time.thread_time()
        known = self.checks.known_aggregate(target)
        if known is not None and self.blobs.has(known[0]):
            return known[0], known[1], True, time.thread_time() - started
        model, size = compute_aggregate(target, self.blobs)
        self.checks.note_aggregate(target, model, size)
        return model, size, False, time.thread_time() - started

    def _aggregates_wanted(self, state: ChainState) -> list[ChainState]:
        """The round states whose aggregate our next proposal would carry, not prepared yet.

        Asked of ``plan_block`` itself, so that what is prepared is exactly what it would
        propose: the open round's aggregate once it is due, or the aggregate that would follow
        the pending updates (with their verdicts) in the same block.
        """
        wanted: list[ChainState] = []

        def want(target: ChainState) -> tuple[str, int] | None:
            prepared = self.aggregate_of(target)
            if prepared is None:
                wanted.append(target)
            return prepared

        plan_block(
            state,
            self.pool.snapshot(),
            height=state.height + 1,
            key=self.key,
            now_ms=max(self.clock.now_ms(), state.head_time + 1),
            verdict_of=self.verdict_of,
            aggregate_of=want,
            has_blob=self.blobs.has,
            signed=self._validations,
        )
        return wanted
