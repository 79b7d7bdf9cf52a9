"""The consensus driver's timers: a check under way holds the propose timeout, a failed fetch
does not; only a timeout that moves the engine pulls from peers; the proposer's wait.

No processes and no network: a real ``ConsensusDriver`` built from fakes of its interfaces
(``bcfl_cli.node.interfaces``) whose blob fetcher and worker are scripted, and real blocks from
the in-memory founders' chain. The engine is not
driven: what the driver feeds it is recorded instead, and its height and round are set by hand.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from bcfl_cli.chain import ChainState
from bcfl_cli.chain.checks import VerdictLike
from bcfl_cli.chain.state import MAX_CLOCK_DRIFT_MS, Offence
from bcfl_cli.consensus import proposer
from bcfl_cli.consensus.messages import (
    EngineState,
    Event,
    LockProof,
    Proposal,
    Recheck,
    ScheduleTimeout,
    StartHeight,
    Step,
    TimeoutFired,
    TimeoutKind,
    Validity,
)
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.consensus_driver import ConsensusDriver
from bcfl_cli.node.interfaces import VoteRecord
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.node.round_driver import build_proposal, plan_block
from bcfl_cli.node.sync import CachingChecks
from bcfl_cli.protocol.block import NIL, Block, ValidatorSet, Vote, VoteType
from bcfl_cli.protocol.tx import Transaction
from bcfl_cli.store.vote_guard import VoteGuard
from bcfl_cli.training.rounds import compute_aggregate
from tests.node._chain_fixture import Chain, did, key, make_chain

PROPOSE_S = 0.2
#: what the hold may add on top of a timeout that is not held: its 0.25 s poll, and a loaded CI
SLACK_S = 0.25 + 0.5


class Fetcher:
    """``ensure_blobs`` answers ``result`` after ``delay_s``; every call is recorded."""

    def __init__(self, *, result: bool, delay_s: float) -> None:
        self.result = result
        self.delay_s = delay_s
        self.calls: list[dict[str, Any]] = []

    async def ensure_blobs(
        self,
        digests: list[str],
        *,
        timeout_s: float = 60.0,
        prefer: Mapping[str, str | tuple[str, ...]] | None = None,
    ) -> bool:
        self.calls.append({"digests": digests, "timeout_s": timeout_s, "prefer": prefer})
        await asyncio.sleep(self.delay_s)
        return self.result


class Blobs:
    """Holds nothing (the update blobs of the proposals are someone else's)."""

    def has(self, digest: str) -> bool:
        return False


class Peers:
    def live(self) -> list[PeerInfo]:
        return []

    def broadcast(self, path: str, payload: Any, *, seen: frozenset[str] | None = None) -> None:
        pass

    async def get(self, peer: PeerInfo, path: str, **kw: Any) -> Any:
        return {}


class Guard:
    """A vote guard that restored nothing and records nothing."""

    def state(self, chain: str) -> EngineState | None:
        return None

    def votes_at(self, chain: str, height: int, validator: str) -> list[Vote]:
        return []

    def sign_vote(self, vote: Vote, key: SigningKey, state: EngineState) -> Vote:
        return vote.signed(key)

    def sign_proposal(self, proposal: Proposal, key: SigningKey, state: EngineState) -> Proposal:
        return proposal.signed(key)


class Worker:
    """The contract check: done once ``release`` is set (the block's real state after)."""

    def __init__(self, after: ChainState) -> None:
        self.after = after
        self.release = asyncio.Event()
        self.release.set()
        self.calls = 0

    async def run(self, fn: Callable[[], Any]) -> Any:
        self.calls += 1
        await self.release.wait()
        return self.after


class Head:
    """The chain at a fixed head: nothing is appended while the driver is tested."""

    def __init__(self, chain: Chain) -> None:
        self.genesis_hash = chain.ledger.block(0).hash
        self.state = chain.state
        self.head = chain.head
        self.alarm: dict[str, Any] | None = None
        self.on_commit: list[Callable[[Block], None]] = []
        self.accepted: list[Block] = []
        self._chain = chain

    def block(self, height: int) -> Block:
        return self._chain.ledger.block(height)

    def head_hash_at(self, height: int) -> str | None:
        return self.block(height).hash if height <= self.state.height else None

    def validator_set_at(self, height: int) -> ValidatorSet | None:
        return self.state.validator_set

    async def wait_for_round(self, number: int, timeout_s: float) -> bool:
        return self.state.round.number >= number

    def accept_block(self, block: Block, new_state: ChainState, *, source: str) -> None:
        self.accepted.append(block)

    def accept_blocks(self, decided: Sequence[tuple[Block, ChainState]], *, source: str) -> None:
        self.accepted += [b for b, _ in decided]

    def raise_alarm(self, height: int, ours: Block, theirs: Block, *, source: str) -> None:
        self.alarm = {"height": height, "blocks": [ours.hash, theirs.hash], "message": source}


class Pool:
    """An empty mempool that records what is submitted to it."""

    def __init__(self) -> None:
        self.submitted: list[Transaction] = []

    def submit(self, tx: Transaction, *, seen: frozenset[str] = frozenset()) -> bool:
        self.submitted.append(tx)
        return True

    def snapshot(self) -> list[Transaction]:
        return []

    def drop(self, tx_hash: str, code: str) -> None:
        pass

    def has_evidence(self, offence: Offence) -> bool:
        return False


class Prepared:
    """Round preparation with nothing prepared and nothing to propose."""

    computing = False

    def verdict_of(self, tx: Transaction) -> VerdictLike | None:
        return None

    def aggregate_of(self, state: ChainState) -> tuple[str, int] | None:
        return None

    def has_work(self, height: int) -> bool:
        return False

    def has_content(self, height: int) -> bool:
        return False

    def needs_heartbeat(self) -> bool:
        return False

    def updates_still_arriving(self) -> int | None:
        return None


class Sync:
    def behind(self) -> None:
        pass

    def wake(self) -> None:
        pass

    def note_consensus_commit(self) -> None:
        pass


@dataclass
class Fakes:
    """Every interface the driver is built from, faked; carol is the validator driven."""

    chain: Head
    fetcher: Fetcher
    worker: Worker
    checks: CachingChecks
    prepared: Prepared = field(default_factory=Prepared)
    gossip: Peers = field(default_factory=Peers)
    clock: Clock = field(default_factory=Clock)
    pool: Pool = field(default_factory=Pool)

    @classmethod
    def of(cls, chain: Chain, fetcher: Fetcher, after: ChainState) -> Fakes:
        return cls(Head(chain), fetcher, Worker(after), CachingChecks(FLChecks(chain.blobs)))

    def driver(self, guard: VoteRecord | None = None) -> ConsensusDriver:
        return ConsensusDriver(**self.services(guard))

    def services(self, guard: VoteRecord | None = None) -> dict[str, Any]:
        return {
            "chain": self.chain,
            "pool": self.pool,
            "prepared": self.prepared,
            "fetcher": self.fetcher,
            "blobs": Blobs(),
            "gossip": self.gossip,
            "sync": Sync(),
            "checks": self.checks,
            "worker": self.worker,
            "guard": guard if guard is not None else Guard(),
            "key": key("carol"),
            "clock": self.clock,
        }


class RecordingDriver(ConsensusDriver):
    def __init__(self, fakes: Fakes) -> None:
        super().__init__(**fakes.services())
        self.events: list[tuple[float, Event]] = []

    def handle(self, event: Event) -> None:
        self.events.append((asyncio.get_running_loop().time(), event))

    def fired(self) -> list[float]:
        return [t for t, e in self.events if isinstance(e, TimeoutFired)]

    def rechecks(self) -> int:
        return sum(isinstance(e, Recheck) for _, e in self.events)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = make_chain(tmp_path, edit={"rounds = 10": "rounds = 2"})
    yield c
    c.ledger.close()


def proposals(chain: Chain, count: int) -> tuple[list[Block], ChainState]:
    """Open round 1, then ``count`` different proposals (by alice) holding bob's update."""
    checks = CachingChecks(FLChecks(chain.blobs))
    state = chain.state
    opening = plan_block(
        state,
        [],
        height=1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=lambda tx: None,
        aggregate_of=lambda s: compute_aggregate(s, chain.blobs),
    )
    block, after = build_proposal(
        state, chain.head, opening, key("alice"), now_ms=chain.now(), checks=checks
    )
    chain.commit(block, after)
    update = chain.update("bob", scale=0.01)
    state = chain.state
    txs = plan_block(
        state,
        [update],
        height=state.height + 1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=lambda tx: checks.check_update(state, tx),
        aggregate_of=lambda s: None,
    )
    assert [t.hash for t in txs][:1] == [update.hash]
    blocks = []
    for i in range(count):
        block, after = build_proposal(
            state, chain.head, txs, key("alice"), now_ms=chain.now() + i, checks=checks
        )
        blocks.append(block)
    return blocks, after


def start(driver: RecordingDriver, block: Block, round: int = 0) -> float:
    """The engine is at the block's height and ``round``; a propose timeout is scheduled."""
    driver.engine.height, driver.engine.round = block.height, round
    driver._schedule(
        ScheduleTimeout(TimeoutKind.PROPOSE, block.height, round, int(PROPOSE_S * 1000))
    )
    return asyncio.get_running_loop().time()


async def until(probe: Any, timeout_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not probe():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def test_a_failed_fetch_does_not_hold_the_propose_timeout(chain: Chain) -> None:
    (block,), after = proposals(chain, 1)

    async def scenario() -> None:
        syncer = Fetcher(result=False, delay_s=0.05)
        driver = RecordingDriver(Fakes.of(chain, syncer, after))
        began = start(driver, block)
        # the engine asks again and again (every Recheck of other proposals): no new fetch
        while not driver.fired():
            assert driver.validate(block) is Validity.UNKNOWN
            assert asyncio.get_running_loop().time() - began < PROPOSE_S + SLACK_S, "held"
            await asyncio.sleep(0.02)
        assert driver.fired()[0] - began < PROPOSE_S + SLACK_S
        assert len(syncer.calls) == 1
        assert not driver._validating and not driver._holding()
        driver.close()

    asyncio.run(scenario())


def test_a_failed_fetch_is_retried_once_per_later_round_without_holding(chain: Chain) -> None:
    (block,), after = proposals(chain, 1)

    async def scenario() -> None:
        syncer = Fetcher(result=False, delay_s=0.05)
        driver = RecordingDriver(Fakes.of(chain, syncer, after))
        driver.engine.height = block.height
        driver.validate(block)
        await until(lambda: not driver._validating)
        assert driver.validate(block) is Validity.UNKNOWN
        await asyncio.sleep(0.01)
        assert len(syncer.calls) == 1  # not again in the same round
        # round 1 starts: the driver has the engine ask again (a Recheck), once
        began = start(driver, block, round=1)
        assert driver.rechecks() == 1
        driver.validate(block)
        await asyncio.sleep(0.01)
        assert len(syncer.calls) == 2
        assert not driver._holding()  # the retry runs alongside the timeout, never holding it
        driver.validate(block)
        await asyncio.sleep(0.01)
        assert len(syncer.calls) == 2
        await until(lambda: bool(driver.fired()))
        assert driver.fired()[0] - began < PROPOSE_S + SLACK_S
        assert driver.validate(block) is Validity.UNKNOWN
        await asyncio.sleep(0.01)
        assert len(syncer.calls) == 2  # failed again in round 1: next try in round 2
        # the retry got the blob this time: the check then holds, and the block is valid
        syncer.result = True
        start(driver, block, round=2)
        assert driver.rechecks() == 2
        driver.validate(block)
        await until(lambda: not driver._validating)
        assert driver.validate(block) is Validity.VALID
        assert block.hash not in {k[0] for k in driver._fetch_failed}
        driver.close()

    asyncio.run(scenario())


class FakeClock(Clock):
    """Wall time set by hand (timers stay real)."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now


def test_the_engine_asks_the_node_clock_before_it_prevotes(chain: Chain) -> None:
    """The prevote rule (PROTOCOL.md §6.2): a block more than ``MAX_CLOCK_DRIFT_MS`` past the
    validator's clock is untimely, until the clock catches up; the driver hands the check to
    the engine, which asks it of fresh proposals only (not in ``validate``)."""
    (block,), after = proposals(chain, 1)
    fakes = Fakes.of(chain, Fetcher(result=True, delay_s=0.0), after)
    clock = FakeClock(block.header.time - MAX_CLOCK_DRIFT_MS - 1)
    fakes.clock = clock
    driver = RecordingDriver(fakes)
    assert driver.engine._timely == driver._timely
    assert [driver._timely(block) for _ in range(3)] == [False] * 3
    assert list(driver._untimely) == [block.hash]  # logged once
    clock.now += 1  # now exactly within the drift
    assert driver._timely(block)
    driver.close()


def test_a_new_proposal_with_a_blob_that_failed_does_not_hold(chain: Chain) -> None:
    (first, second), after = proposals(chain, 2)
    assert first.hash != second.hash

    async def scenario() -> None:
        syncer = Fetcher(result=False, delay_s=0.05)
        driver = RecordingDriver(Fakes.of(chain, syncer, after))
        driver.engine.height = first.height
        driver.validate(first)
        assert driver._holding()  # a first fetch may hold (up to its own bound)
        await until(lambda: not driver._validating)
        syncer.delay_s = 5.0
        began = start(driver, second, round=1)
        driver.validate(second)
        await asyncio.sleep(0.01)
        assert len(syncer.calls) == 2 and not driver._holding()
        await until(lambda: bool(driver.fired()))
        assert driver.fired()[0] - began < PROPOSE_S + SLACK_S
        driver.close()

    asyncio.run(scenario())


def test_a_check_under_way_holds_the_propose_timeout(chain: Chain) -> None:
    (block,), after = proposals(chain, 1)

    async def scenario() -> None:
        fakes = Fakes.of(chain, Fetcher(result=True, delay_s=0.0), after)
        worker = fakes.worker
        worker.release.clear()
        driver = RecordingDriver(fakes)
        start(driver, block)
        driver.validate(block)
        await until(lambda: worker.calls == 1)
        await asyncio.sleep(PROPOSE_S + SLACK_S)
        assert driver._holding() and not driver.fired()
        worker.release.set()
        await until(lambda: bool(driver.fired()))
        assert driver.validate(block) is Validity.VALID
        assert driver.rechecks() == 1
        driver.close()

    asyncio.run(scenario())


def test_blobs_are_asked_of_the_proposer_first(chain: Chain) -> None:
    (block,), after = proposals(chain, 1)

    async def scenario() -> None:
        syncer = Fetcher(result=True, delay_s=0.0)
        driver = RecordingDriver(Fakes.of(chain, syncer, after))
        driver.engine.height = block.height
        driver.validate(block)
        await until(lambda: not driver._validating)
        (call,) = syncer.calls
        blob = next(t.body["blob"] for t in block.txs if t.body.get("blob"))
        assert call["prefer"] == {blob: (did("alice"), did("bob"))}
        driver.close()

    asyncio.run(scenario())


class PullCountingDriver(RecordingDriver):
    def __init__(self, fakes: Fakes) -> None:
        super().__init__(fakes)
        self.pulls: list[int] = []

    async def _pull(self, height: int) -> None:
        self.pulls.append(height)


def test_only_a_timeout_that_moves_the_engine_pulls(chain: Chain) -> None:
    (block,), after = proposals(chain, 1)

    async def scenario() -> None:
        driver = PullCountingDriver(Fakes.of(chain, Fetcher(result=True, delay_s=0.0), after))
        engine = driver.engine
        engine.height, engine.round, engine.step = block.height, 0, Step.PRECOMMIT
        # a healthy height: the proposal and a prevote quorum came before their timeouts
        for kind in (TimeoutKind.PROPOSE, TimeoutKind.PREVOTE):
            driver._schedule(ScheduleTimeout(kind, block.height, 0, 10))
        await until(lambda: len(driver.fired()) == 2)
        assert driver.pulls == []
        # a precommit timeout of the current round moves the engine to the next round: pull
        driver._schedule(ScheduleTimeout(TimeoutKind.PRECOMMIT, block.height, 0, 10))
        await until(lambda: len(driver.fired()) == 3)
        await until(lambda: driver.pulls == [block.height])
        # once the height is committed, its timeouts pull nothing
        engine.step = Step.COMMITTED
        driver._schedule(ScheduleTimeout(TimeoutKind.PRECOMMIT, block.height, 0, 10))
        await until(lambda: len(driver.fired()) == 4)
        await asyncio.sleep(0.05)
        assert driver.pulls == [block.height]
        driver.close()

    asyncio.run(scenario())


class Arriving(Prepared):
    """Updates of the open round arrive on a schedule; ``has_work`` once all are in."""

    def __init__(self, arrivals: list[float], total: int):
        self.arrivals = arrivals
        self.total = total
        self.began = 0.0

    def _arrived(self) -> int:
        now = asyncio.get_running_loop().time() - self.began
        return sum(1 for t in self.arrivals if t <= now)

    def updates_still_arriving(self) -> int | None:
        arrived = self._arrived()
        return None if arrived >= self.total else arrived

    def has_work(self, height: int) -> bool:
        return self._arrived() >= self.total


@pytest.mark.parametrize(
    ("arrivals", "total", "low", "high"),
    [
        # updates keep coming: the wait runs past the interval until the last one is in
        ([0.05, 0.15, 0.25, 0.35], 4, 0.35, 0.55),
        # they stop coming (a trainer is down): one interval without growth ends the wait
        ([0.05, 0.1], 4, 0.3, 0.5),
        # they keep coming, slower than the cap: at most UPDATE_WAIT_INTERVALS intervals
        ([0.1 * i for i in range(1, 40)], 40, 0.6, 0.95),
    ],
)
def test_the_proposer_waits_while_updates_keep_arriving(
    chain: Chain, arrivals: list[float], total: int, low: float, high: float
) -> None:
    _, after = proposals(chain, 1)

    async def scenario() -> None:
        fakes = Fakes.of(chain, Fetcher(result=True, delay_s=0.0), after)
        arriving = fakes.prepared = Arriving(arrivals, total)
        driver = RecordingDriver(fakes)
        driver.empty_block_interval_s = 0.2
        driver.engine.height = 1
        loop = asyncio.get_running_loop()
        arriving.began = loop.time()
        await driver._wait_for_work(fakes.chain.state.height + 1)
        waited = loop.time() - arriving.began
        assert low <= waited <= high + 0.5  # the upper slack: a loaded CI machine
        driver.close()

    asyncio.run(scenario())


class Computing(Prepared):
    """The preparation computes the round's aggregate until ``done_s``; ``has_work`` then."""

    def __init__(self, done_s: float) -> None:
        self.done_s = done_s
        self.began = 0.0

    @property
    def computing(self) -> bool:  # type: ignore[override]
        return asyncio.get_running_loop().time() - self.began < self.done_s

    def has_work(self, height: int) -> bool:
        return not self.computing


@pytest.mark.parametrize(
    ("done_s", "cap_s", "low", "high"), [(0.5, 30.0, 0.5, 0.7), (60, 0.4, 0.4, 0.6)]
)
def test_an_empty_block_interval_waits_while_the_aggregate_is_computed(
    chain: Chain,
    monkeypatch: pytest.MonkeyPatch,
    done_s: float,
    cap_s: float,
    low: float,
    high: float,
) -> None:
    """With --empty-blocks, an interval that ends while the round's aggregate is computed no
    longer starts a height without it (the updates in one block, their aggregate and the next
    round's opening in the next: a height more a round); a preparation that never ends holds
    it at most PREPARING_WAIT_S."""
    import bcfl_cli.node.consensus_driver as consensus_driver

    monkeypatch.setattr(consensus_driver, "PREPARING_WAIT_S", cap_s)
    _, after = proposals(chain, 1)

    async def scenario() -> None:
        fakes = Fakes.of(chain, Fetcher(result=True, delay_s=0.0), after)
        computing = Computing(done_s)
        fakes.prepared = computing
        driver = RecordingDriver(fakes)
        driver.empty_blocks = True
        driver.empty_block_interval_s = 0.1
        driver.engine.height = 1
        loop = asyncio.get_running_loop()
        computing.began = loop.time()
        await driver._wait_for_work(fakes.chain.state.height + 1)
        waited = loop.time() - computing.began
        assert low <= waited <= high + 0.5  # the upper slack: a loaded CI machine
        driver.close()

    asyncio.run(scenario())


class SentPeers(Peers):
    """Records every broadcast payload."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def broadcast(self, path: str, payload: Any, *, seen: frozenset[str] | None = None) -> None:
        self.sent.append(payload)


def test_a_restarted_validator_resends_its_proof_of_lock_and_feeds_back_its_votes(
    chain: Chain, tmp_path: Path
) -> None:
    """Issue 16, item 10, at the node's edge (docs/CONSENSUS.md §4, duty 6).

    carol locked on alice's block through prevotes of alice, bob and dave, signed her own
    prevote and precommit, and crashed. Restarted, she must send the proof of her lock (the
    proposal and those prevotes, persisted with the lock in her vote guard) to every peer and
    serve it to pulls, re-send her votes, and count her own votes again: the engine's log is
    rebuilt from the guard, not only from the peers' gossip.
    """
    (block,), _ = proposals(chain, 1)
    state = chain.state
    height, vset, genesis = state.height + 1, state.validator_set, chain.ledger.block(0).hash
    rnd = next(r for r in range(len(vset)) if proposer(vset, height, r) == did("alice"))
    proposal = Proposal(genesis, height, rnd, block, -1, did("alice")).signed(key("alice"))
    prevotes = [
        Vote(genesis, height, rnd, VoteType.PREVOTE, block.hash, did(n)).signed(key(n))
        for n in ("alice", "bob", "dave")
    ]
    proof = LockProof.from_messages(proposal, prevotes)
    locked = EngineState(height, rnd, Step.PRECOMMIT, rnd, block, rnd, block, proof)
    mine = [
        Vote(genesis, height, rnd, vtype, block.hash, did("carol"))
        for vtype in (VoteType.PREVOTE, VoteType.PRECOMMIT)
    ]
    with VoteGuard(tmp_path / "vote_guard.sqlite") as guard:
        for vote in mine:
            guard.sign_vote(vote, key("carol"), locked)
    fakes = Fakes.of(chain, Fetcher(result=True, delay_s=0), state)
    peers = fakes.gossip = SentPeers()

    async def restart() -> ConsensusDriver:
        with VoteGuard(tmp_path / "vote_guard.sqlite") as guard:
            driver = fakes.driver(guard)
            await driver._resend_recorded_votes()
            driver.handle(StartHeight(height, vset))
            driver.close()
        return driver

    driver = asyncio.run(restart())
    sent = peers.sent
    signed_mine = [v.signed(key("carol")) for v in sorted(mine, key=lambda v: str(v.type))]
    by_signer = sorted(prevotes, key=lambda v: v.validator)  # the proof keeps them so
    expected = [{"proposal": proposal.to_dict()}, *({"vote": v.to_dict()} for v in by_signer)]
    expected += [{"vote": v.to_dict()} for v in signed_mine]
    assert sent == expected
    proposals_log, votes_log = driver.messages_at(height)
    assert proposals_log == [proposal.to_dict()]
    assert sorted(v["validator"] for v in votes_log) == sorted(
        [did("alice"), did("bob"), did("dave"), did("carol"), did("carol")]
    )
    engine = driver.engine
    assert (engine.locked_block, engine.locked_round) == (block, rnd)
    assert engine.votes.quorum_for(rnd, VoteType.PREVOTE, block.hash)  # the proof, re-admitted
    precommits = engine.votes.rounds[(rnd, VoteType.PRECOMMIT)].by_validator
    assert did("carol") in precommits  # her own precommit, fed back
    assert proposal in engine.relay() and all(v in engine.relay() for v in prevotes)


def test_the_pull_log_keeps_only_signed_messages_and_a_share_per_signer(
    chain: Chain, tmp_path: Path
) -> None:
    """What peers pull must not be crowded out by one validator: forged messages are not kept,
    and one signer's messages of a height are capped (issue 16: bounded per signer)."""
    from bcfl_cli.node.consensus_driver import MAX_LOG_PER_SIGNER

    state = chain.state
    height, vset, genesis = state.height + 1, state.validator_set, chain.ledger.block(0).hash
    fakes = Fakes.of(chain, Fetcher(result=True, delay_s=0), state)

    async def feed() -> ConsensusDriver:
        with VoteGuard(tmp_path / "vote_guard.sqlite") as guard:
            driver = fakes.driver(guard)
            return run(driver)

    def run(driver: ConsensusDriver) -> ConsensusDriver:
        driver.handle(StartHeight(height, vset))
        forged = Vote(genesis, height, 0, VoteType.PREVOTE, NIL, did("bob"), "00" * 64)
        driver.on_message(None, forged)
        for r in range(MAX_LOG_PER_SIGNER + 10):
            vote = Vote(genesis, height, r, VoteType.PREVOTE, NIL, did("dave")).signed(key("dave"))
            driver.on_message(None, vote)
        honest = Vote(genesis, height, 0, VoteType.PREVOTE, NIL, did("bob")).signed(key("bob"))
        driver.on_message(None, honest)
        driver.close()
        return driver

    driver = asyncio.run(feed())
    _, votes = driver.messages_at(height)
    by = Counter(v["validator"] for v in votes)
    assert by[did("dave")] == MAX_LOG_PER_SIGNER
    assert by[did("bob")] == 1 and all(v["sig"] != "00" * 64 for v in votes)


def test_signers_outside_the_validator_set_cannot_fill_the_pull_log(
    chain: Chain, tmp_path: Path
) -> None:
    """The pull log's share was per key: votes signed by keys a validator mints (valid
    signatures, no power) filled its 4,096 places 64 at a time, and an honest validator's
    vote for the same height was no longer kept for peers that pull."""
    import hashlib

    import nacl.signing

    from bcfl_cli.node.consensus_driver import MAX_LOG_MESSAGES, MAX_LOG_PER_SIGNER
    from bcfl_cli.protocol.crypto import did_from_public_key

    state = chain.state
    height, vset, genesis = state.height + 1, state.validator_set, chain.ledger.block(0).hash
    fakes = Fakes.of(chain, Fetcher(result=True, delay_s=0), state)
    me = did("carol")
    minted = [
        nacl.signing.SigningKey(hashlib.sha256(b"minted %d" % i).digest())
        for i in range(MAX_LOG_MESSAGES // MAX_LOG_PER_SIGNER + 1)
    ]

    async def feed() -> ConsensusDriver:
        with VoteGuard(tmp_path / "vote_guard.sqlite") as guard:
            driver = fakes.driver(guard)
            driver.handle(StartHeight(height, vset))
            for k in minted:
                signer = did_from_public_key(bytes(k.verify_key))
                for r in range(MAX_LOG_PER_SIGNER):
                    vote = Vote(genesis, height, r, VoteType.PREVOTE, NIL, signer).signed(k)
                    driver.on_message(None, vote)
            honest = Vote(genesis, height, 0, VoteType.PREVOTE, NIL, did("bob")).signed(key("bob"))
            driver.on_message(None, honest)
            driver.close()
            return driver

    driver = asyncio.run(feed())
    _, votes = driver.messages_at(height)
    assert sum(v["validator"] not in vset for v in votes) <= MAX_LOG_PER_SIGNER
    # besides carol's own (the driven validator proposes and votes), bob's vote is kept
    others = [v["validator"] for v in votes if v["validator"] in vset and v["validator"] != me]
    assert others == [did("bob")]
