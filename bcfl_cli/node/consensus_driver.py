"""The edge of the consensus engine: network in, effects out, timers from the node's clock.

The engine (``bcfl_cli.consensus.engine``) is pure and runs unchanged; this driver turns its
actions into effects, in the order its docstring prescribes:

* ``BroadcastProposal`` / ``BroadcastVote``: recorded in the vote guard (durably, with the
  engine's lock state) *before* signing, then sent to every peer and fed back to the engine;
* ``ScheduleTimeout``: ``loop.call_later``; when a timeout fires that moves the engine (not a
  stale one) the driver also pulls the height's messages from every peer
  (``GET /v1/consensus/{height}``), so a message lost on the way costs one timeout, never
  liveness;
* ``Commit``: the node appends the block and its state; the next height starts once there is
  something to propose, a message of that height arrives, or ``empty_block_interval`` passes
  with something to put in the block. An idle chain makes no block (CometBFT's
  ``create_empty_blocks = false``) unless ``empty_blocks`` is on (an empty block every
  interval, the old pace) or the open round's deadline is counted in blocks only (then an
  empty heartbeat block every ``heartbeat_interval_s``: that deadline needs heights);
* ``Evidence``: a ``misbehaviour`` transaction into the mempool.

The application callbacks never compute on the event loop. ``validate`` answers from a cache
and otherwise starts the check in the node's worker thread (after fetching missing blobs) and
says UNKNOWN; the engine is re-run with ``Recheck`` when the answer is in. ``propose`` builds
from what the round driver has prepared (verdicts and aggregates computed beforehand).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from functools import partial
from typing import Any

import nacl.signing

from bcfl_cli.chain.builder import build_block
from bcfl_cli.chain.state import ChainState, check_proposal_time
from bcfl_cli.consensus.engine import Engine, signer_share
from bcfl_cli.consensus.messages import (
    Action,
    BroadcastProposal,
    BroadcastVote,
    Commit,
    Event,
    Evidence,
    Proposal,
    ProposalReceived,
    Recheck,
    ScheduleTimeout,
    StartHeight,
    Step,
    TimeoutConfig,
    TimeoutFired,
    TimeoutKind,
    Validity,
    VoteReceived,
)
from bcfl_cli.errors import BcflError, EncodingError, VerificationError
from bcfl_cli.node.blob_service import BlobScope
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.interfaces import (
    BlobFetcher,
    BlobIndex,
    CommittingChain,
    Gossip,
    PreparedRound,
    SyncSignals,
    TxPool,
    VoteRecord,
    Worker,
)
from bcfl_cli.node.logging import fields
from bcfl_cli.node.peers import CONSENSUS_PATH, PeerInfo
from bcfl_cli.node.round_driver import build_proposal, plan_block
from bcfl_cli.node.sync import CachingChecks
from bcfl_cli.protocol.block import Block, Vote
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.tx import TxKind, make_tx
from bcfl_cli.store.vote_guard import DoubleSignError
from bcfl_cli.wire.refusal import Refusal

log = logging.getLogger("bcfl.node.consensus")

MAX_LOG_MESSAGES = 4_096
#: ... of which at most this many a height from one signer (three messages a round: 21 rounds),
#: so that one validator's equivocations cannot crowd the others' messages out of the log.
MAX_LOG_PER_SIGNER = 64
VALIDATION_CACHE = 256
PULL_TIMEOUT_S = 3.0
MAX_PULLED_MESSAGES = 2_000
STALL_S = 3.0
VALIDATION_GRACE_S = 60.0
#: How long a proposal's blobs are fetched for before the check gives up (the proposer first).
VALIDATION_FETCH_S = 10.0
#: The proposer's wait for a round's updates, in empty-block intervals, while they keep coming.
UPDATE_WAIT_INTERVALS = 4
#: Proposals and blobs whose fetch failed, remembered (bounded) so they stop holding timeouts.
FAILED_FETCHES = 256
#: The longest an idle interval's end waits for the round preparation to finish computing
#: (verdicts, or the aggregate they complete) before it starts the height anyway.
PREPARING_WAIT_S = 30.0


class ConsensusDriver:
    """The consensus reactor: built from the chain it appends to, the mempool, the round
    preparation, the blob fetcher, the peers, block sync's signals, the checks and their
    worker, the vote guard and the key it signs with (implements
    ``interfaces.ConsensusReactor``)."""

    def __init__(
        self,
        *,
        chain: CommittingChain,
        pool: TxPool,
        prepared: PreparedRound,
        fetcher: BlobFetcher,
        blobs: BlobIndex,
        gossip: Gossip,
        sync: SyncSignals,
        checks: CachingChecks,
        worker: Worker,
        guard: VoteRecord,
        key: nacl.signing.SigningKey,
        clock: Clock,
        timeouts: TimeoutConfig | None = None,
        empty_block_interval_s: float = 1.0,
        empty_blocks: bool = True,
        heartbeat_interval_s: float = 60.0,
        scope: BlobScope | None = None,
    ) -> None:
        self.chain = chain
        #: what a block needs fetched and recomputed here (a trainer-only member: its models)
        self.scope = scope if scope is not None else BlobScope(checks, verifies=lambda: True)
        self.pool = pool
        self.prepared = prepared
        self.fetcher = fetcher
        self.blobs = blobs
        self.gossip = gossip
        self.sync = sync
        self.checks = checks
        self.worker = worker
        self.guard = guard
        self.key = key
        self.did = did_from_public_key(bytes(key.verify_key))
        self.clock = clock
        self.empty_block_interval_s = empty_block_interval_s
        self.empty_blocks = empty_blocks
        self.heartbeat_interval_s = heartbeat_interval_s
        self.engine: Engine = Engine(
            chain=chain.genesis_hash,
            me=self.did,
            app=self,
            timeouts=timeouts,
            restored=guard.state(chain.genesis_hash),
            timely=self._timely,
        )
        self._queue: list[Event] = []
        self._busy = False
        self._timers: set[asyncio.TimerHandle] = set()
        # Messages of recent heights, served to peers that pull: {height: {hash: wire dict}}.
        self._log: OrderedDict[int, dict[str, tuple[str, dict[str, Any]]]] = OrderedDict()
        self._log_signers: dict[int, dict[str, int]] = {}  # height -> signer -> messages kept
        # (block hash, state head hash) -> (validity, state after the block)
        self._validated: OrderedDict[tuple[str, str], tuple[Validity, ChainState | None]] = (
            OrderedDict()
        )
        # Proposals being checked -> whether the check may hold the propose timeout: a first
        # fetch of its blobs or the computation may; a retry after a failed fetch may not.
        self._validating: dict[tuple[str, str], bool] = {}
        # Proposals whose blobs could not be fetched -> the engine round of the failure (one
        # retry per later round), and blobs no peer served (a new proposal holding one of them
        # does not hold the propose timeout while it is fetched).
        self._fetch_failed: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._missing_blobs: OrderedDict[str, None] = OrderedDict()
        # Proposals refused for a time past our clock, remembered (bounded) to log each once.
        self._untimely: OrderedDict[str, None] = OrderedDict()
        self._next_height_seen = asyncio.Event()
        self._work = asyncio.Event()
        self._started_height = -1
        self._tasks: set[asyncio.Task[Any]] = set()
        self.commits: int = 0

    # --- life cycle -----------------------------------------------------------------------
    async def run(self) -> None:
        """Start heights one after another (the engine does the rest through events)."""
        await self._resend_recorded_votes()
        self._spawn(self._watch_stalls())
        while True:
            target = self.chain.state.height + 1
            if self.engine.height >= target:
                self._work.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._work.wait(), 1.0)
                continue
            await self._wait_for_work(target)
            if self.chain.state.height + 1 != target or self.engine.height >= target:
                continue
            self._started_height = target
            self._next_height_seen.clear()
            self.handle(StartHeight(target, self.chain.state.validator_set))

    async def _wait_for_work(self, target: int) -> None:
        """Wait until the block at ``target`` would hold something, or the interval passed.

        While the open round's updates are still arriving (more came in during the last
        interval and other trainers' are expected), the interval is extended, up to
        UPDATE_WAIT_INTERVALS of them: proposing the first few alone cost every round one more
        height, a full consensus instance (measured with 10 members: two heights a round).

        Without ``empty_blocks``, the interval's end starts the height only if the block would
        hold something (``has_content``) or a heartbeat is due (``needs_heartbeat``, at most
        one every ``heartbeat_interval_s``); otherwise the wait goes on, woken by new
        transactions, prepared verdicts, a round's deadline time passing (``has_work`` checks
        it at each 0.1 s step) and messages of the next height. With or without, it waits
        while the round preparation computes (up to PREPARING_WAIT_S).
        """
        loop = asyncio.get_running_loop()
        interval = self.empty_block_interval_s
        started = loop.time()
        deadline = started + interval
        if target == 1 or self.engine.height < 0:
            deadline = started
        extensions = 0
        arrived = self.prepared.updates_still_arriving()
        while True:
            if loop.time() >= deadline:
                now_arrived = self.prepared.updates_still_arriving()
                if (
                    now_arrived is None
                    or extensions >= UPDATE_WAIT_INTERVALS - 1
                    or now_arrived <= (arrived or 0)
                ) and self._idle_block_due(target, loop.time() - started):
                    return
                if now_arrived is not None and now_arrived > (arrived or 0):
                    extensions += 1
                    arrived = now_arrived
                deadline = loop.time() + interval
            if self._next_height_seen.is_set() or self.prepared.has_work(target):
                return
            if self.chain.state.height + 1 != target:
                return
            self._work.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._work.wait(), max(0.0, min(0.1, deadline - loop.time()))
                )

    def _idle_block_due(self, target: int, waited_s: float) -> bool:
        """Whether the interval's end should start the height at ``target`` (see above)."""
        # a node whose engine never started cannot hear of the next height (``on_message``)
        if target == 1 or self.engine.height < 0:
            return True
        # The preparation is computing verdicts or the aggregate they complete: a block now
        # would carry the round's last updates and the next one their aggregate and the next
        # round's opening, a height more on the round's critical path (the trainers start at
        # that commit; 0.04-0.3 s a round at 10M and 25M with --empty-blocks, issue 19). Its
        # end pokes the reactor; bounded, so that a check that hangs stops nothing.
        if self.prepared.computing and waited_s < PREPARING_WAIT_S:
            return False
        if self.empty_blocks:
            return True
        if self.prepared.has_content(target):
            return True
        return self.prepared.needs_heartbeat() and waited_s >= self.heartbeat_interval_s

    async def _watch_stalls(self) -> None:
        """If a height makes no progress for STALL_S, pull from peers and re-send our votes.

        Timeouts already pull, but a node that missed the messages which would have scheduled
        its next timeout (2f+1 prevotes of any kind) would otherwise wait forever.
        """
        last: tuple[int, int, int] | None = None
        while True:
            await asyncio.sleep(STALL_S)
            engine = self.engine
            now = (engine.height, engine.round, int(engine.step))
            if engine.height >= 0 and engine.step != Step.COMMITTED and now == last:
                log.info(
                    "no progress; pulling from peers",
                    extra=fields(height=engine.height, round=engine.round),
                )
                self._resend_own(engine.height)
                await self._pull(engine.height)
            last = now

    def _resend_own(self, height: int) -> None:
        """Re-send our own messages of ``height`` and the proof of our validValue (duty 5):
        a peer that missed a prevote only we hold cannot accept our re-proposal without it."""
        for kind, wire in list(self._log.get(height, {}).values()):
            mine = wire.get("validator") if kind == "vote" else wire.get("proposer")
            if mine == self.did:
                self.gossip.broadcast(CONSENSUS_PATH, {kind: wire})
        if self.engine.height == height:
            for message in self.engine.proof_of_lock():
                self._send(message)

    def poke(self) -> None:
        """Something changed (new transaction, prepared verdict, commit): re-check for work."""
        self._work.set()

    def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in self._tasks:
            task.cancel()

    async def _resend_recorded_votes(self) -> None:
        """After a restart (docs/CONSENSUS.md §4, duty 6): re-send the proof of our lock and
        what we signed at this height, and feed our own votes back to the engine.

        The proof (the proposal of validValue and the prevotes for it, persisted with the lock)
        is what lets peers accept our re-proposal of the block we are locked on: one of its
        prevotes may have reached only us, and without it the height never ends (issue 16,
        item 10). It also goes into the log that peers pull. Our own votes (same signatures:
        Ed25519 is deterministic) count towards our own quorums like anyone's; the engine
        keeps them until ``StartHeight``.
        """
        chain, height = self.chain.genesis_hash, self.chain.state.height + 1
        restored = self.guard.state(chain)
        if restored is not None and restored.height == height:
            for message in restored.proof_messages(chain):
                self._send(message)
        for vote in self.guard.votes_at(chain, height, self.did):
            signed = vote.signed(self.key)
            self._send(signed)
            self.handle(VoteReceived(signed))

    def _send(self, message: Proposal | Vote) -> None:
        """Remember ``message`` in the log peers pull, and send it to every peer."""
        kind = "proposal" if isinstance(message, Proposal) else "vote"
        wire = message.to_dict()
        self._remember(message.height, message.hash, kind, wire)
        self.gossip.broadcast(CONSENSUS_PATH, {kind: wire})

    # --- inbound ----------------------------------------------------------------------------
    def on_message(self, proposal: Proposal | None, vote: Vote | None) -> None:
        newest = max(m.height for m in (proposal, vote) if m is not None)
        if newest > self.engine.height + 1:
            self.sync.behind()  # heights behind: sync, do not wait for the next poll
        # A message whose signature does not check is neither kept for pulls nor handled: a
        # validator could otherwise fill the log with votes forged in the others' names.
        if proposal is not None and not self.engine.authentic(proposal):
            proposal = None
        if vote is not None and not self.engine.authentic(vote):
            vote = None
        if proposal is not None:
            if proposal.height > self.engine.height and self.engine.height >= 0:
                self._next_height_seen.set()
                self.poke()
            self._remember(proposal.height, proposal.hash, "proposal", proposal.to_dict())
            self.handle(ProposalReceived(proposal))
        if vote is not None:
            if vote.height > self.engine.height and self.engine.height >= 0:
                self._next_height_seen.set()
                self.poke()
            self._remember(vote.height, vote.hash, "vote", vote.to_dict())
            self.handle(VoteReceived(vote))

    def progress(self) -> dict[str, Any]:
        """Where the engine stands, for ``/v1/status``."""
        engine = self.engine
        return {
            "height": engine.height,
            "round": engine.round,
            "step": engine.step.name.lower(),
            "commits": self.commits,
        }

    def messages_at(self, height: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        entries = self._log.get(height, {})
        proposals = [d for kind, d in entries.values() if kind == "proposal"]
        votes = [d for kind, d in entries.values() if kind == "vote"]
        return proposals, votes

    def _remember(self, height: int, digest: str, kind: str, wire: dict[str, Any]) -> None:
        current = self.chain.state.height + 1
        if not current - 2 <= height <= current + 1:
            return
        entries = self._log.setdefault(height, {})
        signer = str(wire.get("proposer" if kind == "proposal" else "validator", ""))
        # signers outside the set in force share one share: minted keys get no room of their own
        share = signer_share(signer, self.chain.state.validator_set)
        counts = self._log_signers.setdefault(height, {})
        if (
            digest not in entries
            and len(entries) < MAX_LOG_MESSAGES
            and counts.get(share, 0) < MAX_LOG_PER_SIGNER
        ):
            entries[digest] = (kind, wire)
            counts[share] = counts.get(share, 0) + 1
        while len(self._log) > 4:
            old_height, _ = self._log.popitem(last=False)
            self._log_signers.pop(old_height, None)

    # --- the engine loop --------------------------------------------------------------------
    def handle(self, event: Event) -> None:
        """Feed ``event``; actions may feed more events, processed in order (no recursion)."""
        self._queue.append(event)
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                event = self._queue.pop(0)
                if isinstance(event, TimeoutFired):
                    self._log_timeout(event)
                try:
                    for action in self.engine.handle(event):
                        self._act(action)
                except Exception:
                    log.exception("consensus event %s failed", type(event).__name__)
        finally:
            self._busy = False

    def _moves_engine(self, event: TimeoutFired) -> bool:
        """Whether ``event`` will move the engine (a stale timeout is ignored by it).

        In a healthy height every timeout is stale when it fires: the proposal, the prevote
        quorum and the precommit quorum came first.
        """
        engine = self.engine
        if event.height != engine.height or event.round != engine.round:
            return False
        if engine.step == Step.COMMITTED:
            return False
        if event.kind is TimeoutKind.PROPOSE and engine.step != Step.PROPOSE:
            return False
        return not (event.kind is TimeoutKind.PREVOTE and engine.step != Step.PREVOTE)

    def _log_timeout(self, event: TimeoutFired) -> None:
        if self._moves_engine(event):
            log.debug(
                "timeout",
                extra=fields(kind=event.kind.value, height=event.height, round=event.round),
            )

    def _act(self, action: Action) -> None:
        if isinstance(action, BroadcastProposal):
            try:
                signed = self.guard.sign_proposal(action.proposal, self.key, action.state)
            except DoubleSignError as exc:
                log.error("not proposing: %s", exc.message)
                return
            wire = signed.to_dict()
            self._remember(signed.height, signed.hash, "proposal", wire)
            self.gossip.broadcast(CONSENSUS_PATH, {"proposal": wire})
            self._queue.append(ProposalReceived(signed))
        elif isinstance(action, BroadcastVote):
            try:
                vote = self.guard.sign_vote(action.vote, self.key, action.state)
            except DoubleSignError as exc:
                log.error("not voting: %s", exc.message)
                return
            wire = vote.to_dict()
            log.debug(
                "voted",
                extra=fields(
                    type=vote.type.value,
                    height=vote.height,
                    round=vote.round,
                    nil=not vote.block,
                ),
            )
            self._remember(vote.height, vote.hash, "vote", wire)
            self.gossip.broadcast(CONSENSUS_PATH, {"vote": wire})
            self._queue.append(VoteReceived(vote))
        elif isinstance(action, ScheduleTimeout):
            self._schedule(action)
        elif isinstance(action, Commit):
            self._commit(action.block)
        elif isinstance(action, Evidence):
            self._evidence(action)

    def _schedule(self, action: ScheduleTimeout) -> None:
        """Fire ``action`` after its duration on the node's clock.

        A propose timeout is held back while this node is still checking a proposal of that
        height (a first fetch of its blobs, the contract check or aggregate recompute), up to
        VALIDATION_GRACE_S: the engine would otherwise prevote nil on a valid block only
        because checking it takes longer than the timeout. A proposal whose blobs could not be
        fetched (their holder is down or hung) holds nothing: its retry, at most once per later
        round, runs while the timeout takes its base course.
        """
        event = TimeoutFired(action.kind, action.height, action.round)
        clock = self.clock
        give_up = clock.monotonic() + action.duration_ms / 1000.0 + VALIDATION_GRACE_S
        if action.kind is TimeoutKind.PROPOSE and self._retry_due(action.height, action.round):
            self.handle(Recheck())  # the engine asks ``validate`` again: one retry this round

        def fire() -> None:
            self._timers.difference_update(timer)
            timer.clear()
            if (
                action.kind is TimeoutKind.PROPOSE
                and self._holding()
                and self.engine.height == action.height
                and clock.monotonic() < give_up
            ):
                timer.append(clock.call_later(0.25, fire))
                self._timers.update(timer)
                return
            # Pull only for a timeout that moves the engine: a stale one means the messages
            # came (pulling on each cost every node nine GETs per height for nothing)
            if self._moves_engine(event):
                self._spawn(self._pull(action.height))
            self.handle(event)

        timer: list[asyncio.TimerHandle] = [clock.call_later(action.duration_ms / 1000.0, fire)]
        self._timers.update(timer)

    def _holding(self) -> bool:
        """A check of a proposal on our head is under way that may hold the propose timeout."""
        head = self.chain.state.head_hash
        return any(holds and key[1] == head for key, holds in self._validating.items())

    def _retry_due(self, height: int, round: int) -> bool:
        """A proposal on our head whose fetch failed in an earlier round of ``height``."""
        state = self.chain.state
        if height != state.height + 1:
            return False
        return any(
            key[1] == state.head_hash and failed < round
            for key, failed in self._fetch_failed.items()
        )

    def _commit(self, block: Block) -> None:
        state = self.chain.state
        key = (block.hash, state.head_hash)
        known = self._validated.get(key)
        if block.height != state.height + 1:
            return  # the sync loop already brought the chain past it
        if known is None or known[1] is None:
            # Our check of this block is no longer cached: check it again (fully, with its
            # certificate) before appending, off the event loop.
            self._spawn(self._commit_checked(block, state))
            return
        self._append(block, known[1])

    def _append(self, block: Block, after: ChainState) -> None:
        self.commits += 1
        self.chain.accept_block(block, after, source="consensus")
        if self.chain.state.head_hash == block.hash:  # appended (no safety alarm)
            self.sync.note_consensus_commit()

    async def _commit_checked(self, block: Block, state: ChainState) -> None:
        scope = self.scope
        if not scope.held(self.blobs, block):
            await self.fetcher.ensure_blobs(
                scope.blobs(block), timeout_s=VALIDATION_FETCH_S, prefer=scope.prefer(block)
            )
            if not scope.held(self.blobs, block):
                log.warning("cannot fetch the blobs of decided block %d yet", block.height)
                self.sync.wake()
                return
        try:
            after = await self.worker.run(partial(state.apply, block, checks=scope.checks()))
        except Exception as exc:  # a BcflError, or a check that failed unexpectedly: logged
            message = exc.message if isinstance(exc, BcflError) else repr(exc)
            log.error("decided block %d fails our checks: %s", block.height, message)
            self.sync.wake()
            return
        if self.chain.state is state:
            self._append(block, after)

    def _evidence(self, action: Evidence) -> None:
        """Submit evidence of an equivocation unless the chain or the mempool already holds it.

        Every honest validator sees the same double vote; the first evidence to reach the
        mempools is the one recorded (the chain refuses a second one, ``duplicate_evidence``).
        """
        member = self.chain.state.member(self.did)
        if member is None or not member.is_validator:
            return
        first = action.first
        offence = (action.offender, first.height, first.round, str(first.type))
        log.warning(
            "validator equivocated: two votes at one height/round/step",
            extra=fields(offender=action.offender, height=first.height),
        )
        if offence in self.chain.state.offences or self.pool.has_evidence(offence):
            log.info(
                "misbehaviour evidence already on chain or pending; not submitted again",
                extra=fields(offender=action.offender, height=first.height),
            )
            return
        try:
            tx = make_tx(
                self.key,
                self.chain.genesis_hash,
                TxKind.MISBEHAVIOUR,
                action.to_body(),
                time_ms=self.clock.now_ms(),
            )
            self.pool.submit(tx)
        except BcflError as exc:
            log.warning("misbehaviour evidence not submitted: %s", exc.message)

    # --- pulls -----------------------------------------------------------------------------
    async def _pull(self, height: int) -> None:
        async def one(peer: PeerInfo) -> list[Event]:
            try:
                data = await self.gossip.get(
                    peer, f"/v1/consensus/{height}", timeout_s=PULL_TIMEOUT_S
                )
            except Refusal:
                return []
            events: list[Event] = []
            if not isinstance(data, dict):
                return events
            proposals = data.get("proposals", [])
            votes = data.get("votes", [])
            if not isinstance(proposals, list) or not isinstance(votes, list):
                return events
            for raw in proposals[:MAX_PULLED_MESSAGES]:
                with contextlib.suppress(EncodingError):
                    events.append(ProposalReceived(Proposal.from_dict(raw)))
            for raw in votes[:MAX_PULLED_MESSAGES]:
                with contextlib.suppress(EncodingError):
                    events.append(VoteReceived(Vote.from_dict(raw)))
            return events

        results = await asyncio.gather(*(one(p) for p in self.gossip.live()))
        for events in results:
            for event in events:
                if isinstance(event, ProposalReceived):
                    self.on_message(event.proposal, None)
                elif isinstance(event, VoteReceived):
                    self.on_message(None, event.vote)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- the application (engine callbacks) -------------------------------------------------
    def propose(self, height: int, round: int) -> Block:
        state = self.chain.state
        try:
            return self._propose(height, round)
        except Exception:
            log.exception("building the proposal failed; proposing an empty block instead")
            return build_block(state, self.chain.head, [], self.key, time_ms=self.clock.now_ms())

    def _propose(self, height: int, round: int) -> Block:
        state = self.chain.state
        now = self.clock.now_ms()
        txs = plan_block(
            state,
            self.pool.snapshot(),
            height=height,
            key=self.key,
            now_ms=now,
            verdict_of=self.prepared.verdict_of,
            aggregate_of=self.prepared.aggregate_of,
            has_blob=self.blobs.has,
        )
        block, new_state = build_proposal(
            state,
            self.chain.head,
            txs,
            self.key,
            now_ms=now,
            checks=self.checks.cached_only(),
            on_dropped=self.pool.drop,
        )
        self._store_validity(block.hash, state.head_hash, Validity.VALID, new_state)
        log.debug(
            "proposing",
            extra=fields(height=height, round=round, block=block.hash, txs=len(block.txs)),
        )
        return block

    def validate(self, block: Block) -> Validity:
        state = self.chain.state
        if block.header.prev != state.head_hash or block.height != state.height + 1:
            return Validity.INVALID
        key = (block.hash, state.head_hash)
        known = self._validated.get(key)
        if known is not None:
            return known[0]
        if key in self._validating:
            return Validity.UNKNOWN
        failed = self._fetch_failed.get(key)
        if failed is not None and not (
            self.engine.height == block.height and self.engine.round > failed
        ):
            return Validity.UNKNOWN  # its blobs were not to be had this round; retry in the next
        missing = any(d in self._missing_blobs for d in self.scope.blobs(block))
        self._validating[key] = failed is None and not missing
        self._spawn(self._validate_async(block, state))
        return Validity.UNKNOWN

    def _timely(self, block: Block) -> bool:
        """The prevote rule on the block time (PROTOCOL.md §6.2): not past our clock plus the
        drift allowed, nor behind it by more than the lag allowed. The engine asks it before it
        prevotes for a fresh proposal (not part of ``validate``, which also decides and
        locks); each refused block is logged once."""
        state = self.chain.state
        parent = state.head_time if block.header.prev == state.head_hash else None
        try:
            check_proposal_time(block, self.clock.now_ms(), parent_time=parent)
        except VerificationError as exc:
            if block.hash not in self._untimely:
                self._untimely[block.hash] = None
                while len(self._untimely) > FAILED_FETCHES:
                    self._untimely.popitem(last=False)
                log.warning(
                    "proposal refused",
                    extra=fields(
                        height=block.height, block=block.hash, code=exc.code, reason=exc.message
                    ),
                )
            return False
        return True

    async def _validate_async(self, block: Block, state: ChainState) -> None:
        key = (block.hash, state.head_hash)
        try:
            scope = self.scope
            digests = scope.blobs(block)
            # The proposer first: it held every blob when it proposed (``plan_block`` leaves
            # out updates whose blob it lacks) and it was alive a moment ago; the author, who
            # may be down or hung, only after it.
            prefer = scope.prefer(block)
            try:
                # bounded as a whole: a download of the same blob by the round preparation or
                # the sync loop (holding its lock, asking a hung author) is not waited out
                fetched = await asyncio.wait_for(
                    self.fetcher.ensure_blobs(digests, timeout_s=VALIDATION_FETCH_S, prefer=prefer),
                    VALIDATION_FETCH_S,
                )
            except TimeoutError:
                fetched = False
            if not fetched or not scope.held(self.blobs, block):
                self._note_fetch_failed(key, digests)
                log.info(
                    "cannot fetch the blobs of proposal %s; not holding the propose timeout",
                    block.hash[:16],
                    extra=fields(height=block.height, round=self.engine.round),
                )
                return  # stays UNKNOWN: the propose timeout prevotes nil
            for digest in digests:
                self._missing_blobs.pop(digest, None)
            self._fetch_failed.pop(key, None)
            if key in self._validating:
                self._validating[key] = True  # a computation under way holds the timeout

            def check() -> ChainState:
                return state.apply(block, checks=scope.checks(), proposal=True)

            try:
                new_state = await self.worker.run(check)
                self._store_validity(block.hash, state.head_hash, Validity.VALID, new_state)
            except VerificationError as exc:
                log.warning(
                    "proposal refused",
                    extra=fields(
                        height=block.height, block=block.hash, code=exc.code, reason=exc.message
                    ),
                )
                self._store_validity(block.hash, state.head_hash, Validity.INVALID, None)
            except BcflError as exc:
                log.warning("proposal could not be checked: %s", exc.message)
                return
            except Exception:
                # A check that fails unexpectedly: prevoting nil is always safe, and a verdict
                # now (INVALID) spares the propose timeout; the task must not die unlogged.
                log.exception("checking proposal %s failed; prevoting nil", block.hash[:16])
                self._store_validity(block.hash, state.head_hash, Validity.INVALID, None)
        finally:
            self._validating.pop(key, None)
        if self.chain.state is state:
            self.handle(Recheck())

    def _note_fetch_failed(self, key: tuple[str, str], digests: list[str]) -> None:
        """Remember (bounded) that ``key``'s blobs could not be fetched, and which were missing."""
        self._fetch_failed[key] = self.engine.round
        self._fetch_failed.move_to_end(key)
        while len(self._fetch_failed) > FAILED_FETCHES:
            self._fetch_failed.popitem(last=False)
        for digest in digests:
            if not self.blobs.has(digest):
                self._missing_blobs[digest] = None
                self._missing_blobs.move_to_end(digest)
        while len(self._missing_blobs) > FAILED_FETCHES:
            self._missing_blobs.popitem(last=False)

    def _store_validity(
        self, block_hash: str, head: str, validity: Validity, state: ChainState | None
    ) -> None:
        self._validated[(block_hash, head)] = (validity, state)
        while len(self._validated) > VALIDATION_CACHE:
            self._validated.popitem(last=False)
