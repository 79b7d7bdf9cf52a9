"""Round preparation isolates each update: one that cannot be checked stops nothing else.

A 5 KB update whose safetensors header was 5,000 nested ``[`` raised ``RecursionError`` out of
the node's preparation pass (issue 16, item 2): the honest updates queued behind it never got a
verdict and the round never closed, not even at its deadline. The real
``RoundPreparation.prepare_once`` runs here, built from fakes of its interfaces (no processes,
no network), over the in-memory founders' chain.
"""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

import bcfl_cli.node.round_preparation as round_preparation
from bcfl_cli.chain import ChainState
from bcfl_cli.chain.state import Offence
from bcfl_cli.errors import BlobError
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.round_driver import build_proposal, plan_block
from bcfl_cli.node.round_preparation import RoundPreparation
from bcfl_cli.node.sync import CachingChecks
from bcfl_cli.node.worker import ThreadWorker
from bcfl_cli.protocol.block import Block, ValidatorSet
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.training.rounds import compute_aggregate
from tests.node._chain_fixture import Chain, did, key, make_chain

T = TypeVar("T")

NESTED = struct.pack("<Q", 5000) + b"[" * 5000


class Pool:
    def __init__(self, txs: list[Transaction]) -> None:
        self.txs = txs

    def submit(self, tx: Transaction, *, seen: frozenset[str] = frozenset()) -> bool:
        self.txs.append(tx)
        return True

    def snapshot(self) -> list[Transaction]:
        return list(self.txs)

    def drop(self, tx_hash: str, code: str) -> None:
        self.txs = [t for t in self.txs if t.hash != tx_hash]

    def has_evidence(self, offence: Offence) -> bool:
        return False


class Fetcher:
    """Every blob is held already (the in-memory chain's store)."""

    async def ensure_blobs(
        self,
        digests: list[str],
        *,
        timeout_s: float = 60.0,
        prefer: Mapping[str, str | tuple[str, ...]] | None = None,
    ) -> bool:
        return True


class InlineWorker:
    async def run(self, fn: Callable[[], T]) -> T:
        return fn()


class Head:
    """The chain at a fixed head, as the preparation reads it."""

    def __init__(self, chain: Chain) -> None:
        self.genesis_hash = chain.ledger.block(0).hash
        self.state = chain.state
        self.head = chain.head
        self.alarm: dict[str, Any] | None = None
        self.on_commit: list[Callable[[Block], None]] = []
        self._chain = chain

    def block(self, height: int) -> Block:
        return self._chain.ledger.block(height)

    def head_hash_at(self, height: int) -> str | None:
        return self.block(height).hash if height <= self.state.height else None

    def validator_set_at(self, height: int) -> ValidatorSet | None:
        return self.state.validator_set

    async def wait_for_round(self, number: int, timeout_s: float) -> bool:
        return self.state.round.number >= number


class Broken(FLChecks):
    """The contract, except that checking ``victim`` fails (a corrupt local copy, say)."""

    victim = ""

    def check_update(self, state: ChainState, tx: Transaction) -> Any:
        if tx.hash == self.victim:
            raise BlobError(f"blob of {tx.hash[:16]} is corrupt here")
        return super().check_update(state, tx)


def preparation(chain: Chain, pending: list[Transaction], checks: FLChecks) -> RoundPreparation:
    """The real round preparation of alice's node, built from fakes of its interfaces."""
    return RoundPreparation(
        chain=Head(chain),
        pool=Pool(pending),
        checks=CachingChecks(checks),
        blobs=chain.blobs,
        fetcher=Fetcher(),
        worker=InlineWorker(),
        key=key("alice"),
        did=did("alice"),
        clock=Clock(),
    )


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = make_chain(tmp_path, edit={"rounds = 10": "rounds = 2"})
    yield c
    c.ledger.close()


def _commit(chain: Chain, txs: list[Transaction]) -> None:
    block, after = build_proposal(
        chain.state, chain.head, txs, key("alice"), now_ms=chain.now(), checks=None
    )
    chain.commit(block, after)


def _open_round(chain: Chain) -> None:
    opening = plan_block(
        chain.state,
        [],
        height=chain.state.height + 1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=lambda tx: None,
        aggregate_of=lambda s: compute_aggregate(s, chain.blobs),
    )
    _commit(chain, opening)
    assert chain.state.round.open


def _hostile(chain: Chain, name: str) -> Transaction:
    digest = chain.blobs.put(NESTED)
    rnd = chain.state.round
    body = {
        "round": rnd.number,
        "base_model": rnd.base_model,
        "blob": digest,
        "blob_size": len(NESTED),
        "num_samples": 50,
        "metrics": {},
    }
    return chain.tx(name, TxKind.UPDATE, body)


def test_a_nested_header_is_rejected_and_the_honest_updates_are_judged(chain: Chain) -> None:
    _open_round(chain)
    hostile = _hostile(chain, "dave")
    honest = [chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)]
    prep = preparation(chain, [hostile, *honest], FLChecks(chain.blobs))
    asyncio.run(prep.prepare_once())
    verdict = prep.verdict_of(hostile)
    assert verdict is not None and (verdict.accept, verdict.reason) == (False, "malformed_blob")
    assert all((v := prep.verdict_of(tx)) is not None and v.accept for tx in honest)
    assert prep.aggregates, "the aggregate the honest updates complete was not prepared"
    txs = plan_block(
        chain.state,
        prep.pool.snapshot(),
        height=chain.state.height + 1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=prep.verdict_of,
        aggregate_of=prep.aggregate_of,
    )
    kinds = [tx.kind for tx in txs]
    assert kinds.count(TxKind.UPDATE) == 3 and TxKind.AGGREGATE in kinds, kinds
    _commit(chain, txs)
    assert chain.state.round.number == 2 and len(chain.state.round.accepted) == 0


def test_an_update_whose_check_fails_is_left_out_and_the_others_go_on(chain: Chain) -> None:
    _open_round(chain)
    victim = chain.update("dave", scale=0.03)
    honest = [chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)]
    checks = Broken(chain.blobs)
    checks.victim = victim.hash
    prep = preparation(chain, [victim, *honest], checks)
    asyncio.run(prep.prepare_once())  # no exception escapes
    assert prep.verdict_of(victim) is None
    assert all((v := prep.verdict_of(tx)) is not None and v.accept for tx in honest)
    assert prep.aggregates


def test_the_round_closes_at_its_deadline_when_its_only_update_cannot_be_checked(
    chain: Chain,
) -> None:
    _open_round(chain)
    victim = chain.update("dave", scale=0.03)
    while chain.state.height < chain.state.round.deadline_height:
        _commit(chain, [])
    checks = Broken(chain.blobs)
    checks.victim = victim.hash
    prep = preparation(chain, [victim], checks)
    asyncio.run(prep.prepare_once())
    txs = plan_block(
        chain.state,
        prep.pool.snapshot(),
        height=chain.state.height + 1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=prep.verdict_of,
        aggregate_of=prep.aggregate_of,
    )
    assert [tx.kind for tx in txs] == [TxKind.AGGREGATE, TxKind.OPEN_ROUND]
    _commit(chain, txs)
    assert chain.state.round.number == 2


class Counting(FLChecks):
    """The contract, counting the aggregates it recomputes to check a proposal."""

    aggregates = 0

    def check_aggregate(self, state: Any, tx: Transaction) -> None:
        self.aggregates += 1
        super().check_aggregate(state, tx)


def _proposal(chain: Chain, honest: list[Transaction]) -> Block:
    """The proposer's block of the round's updates and their aggregate (another node's)."""
    proposer = preparation(chain, list(honest), FLChecks(chain.blobs))
    asyncio.run(proposer.prepare_once())
    txs = plan_block(
        chain.state,
        proposer.pool.snapshot(),
        height=chain.state.height + 1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=proposer.verdict_of,
        aggregate_of=proposer.aggregate_of,
    )
    assert TxKind.AGGREGATE in [tx.kind for tx in txs]
    block, _ = build_proposal(
        chain.state, chain.head, txs, key("alice"), now_ms=chain.now(), checks=None
    )
    return block


def _counting_compute(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []

    def counted(state: ChainState, blobs: Any) -> tuple[str, int]:
        calls.append(1)
        return compute_aggregate(state, blobs)

    monkeypatch.setattr(round_preparation, "compute_aggregate", counted)
    return calls


def test_a_proposal_checked_first_leaves_its_aggregate_to_the_preparation(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A proposal that arrives before this node prepared the round's aggregate is checked by
    recomputing it; the preparation then takes that result instead of a second pass."""
    _open_round(chain)
    honest = [chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)]
    block = _proposal(chain, honest)
    computed = _counting_compute(monkeypatch)
    checks = Counting(chain.blobs)
    ours = preparation(chain, list(honest), checks)
    chain.state.apply(block, checks=ours.checks, verify_signatures=False, proposal=True)
    assert checks.aggregates == 1
    asyncio.run(ours.prepare_once())
    assert computed == [], "the preparation computed the aggregate the check had computed"
    aggregate = next(tx for tx in block.txs if tx.kind is TxKind.AGGREGATE)
    assert list(ours.aggregates.values()) == [
        (aggregate.body["model"], aggregate.body["model_size"])
    ]


def test_a_proposal_check_queued_behind_the_preparation_does_not_compute_again(
    chain: Chain, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's one worker runs the preparation's aggregate, then a proposal's check queued
    behind it: that check finds the aggregate noted already (it used to look before the event
    loop had noted it, and computed the whole aggregate again: seconds at 25M)."""
    _open_round(chain)
    honest = [chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)]
    block = _proposal(chain, honest)
    started, release = threading.Event(), threading.Event()

    def held(state: ChainState, blobs: Any) -> tuple[str, int]:
        started.set()
        assert release.wait(30.0)
        return compute_aggregate(state, blobs)

    monkeypatch.setattr(round_preparation, "compute_aggregate", held)
    checks = Counting(chain.blobs)
    worker = ThreadWorker()
    ours = RoundPreparation(
        chain=Head(chain),
        pool=Pool(list(honest)),
        checks=CachingChecks(checks),
        blobs=chain.blobs,
        fetcher=Fetcher(),
        worker=worker,
        key=key("alice"),
        did=did("alice"),
        clock=Clock(),
    )

    async def both() -> None:
        loop = asyncio.get_running_loop()
        preparing = asyncio.ensure_future(ours.prepare_once())
        assert await loop.run_in_executor(None, started.wait, 30.0)
        state = chain.state
        checked = threading.Event()

        def check() -> ChainState:
            try:
                return state.apply(
                    block, checks=ours.checks, verify_signatures=False, proposal=True
                )
            finally:
                checked.set()

        checking = asyncio.ensure_future(worker.run(check))
        await asyncio.sleep(0.05)  # the check is queued on the worker, behind the aggregate
        release.set()
        # the event loop busy elsewhere (a loaded node: HTTP, votes) until the worker has run
        # the check: the preparation's coroutine resumes only after it
        assert checked.wait(60.0)
        await asyncio.wait_for(asyncio.gather(preparing, checking), 60.0)

    try:
        asyncio.run(both())
    finally:
        worker.shutdown()
    assert checks.aggregates == 0, "the proposal's check recomputed the prepared aggregate"
    assert ours.aggregates
