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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import pytest

from bcfl_cli.chain import ChainState
from bcfl_cli.chain.state import Offence
from bcfl_cli.errors import BlobError
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.round_driver import build_proposal, plan_block
from bcfl_cli.node.round_preparation import RoundPreparation
from bcfl_cli.node.sync import CachingChecks
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
