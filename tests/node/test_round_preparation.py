"""Round preparation isolates each update: one that cannot be checked stops nothing else.

A 5 KB update whose safetensors header was 5,000 nested ``[`` raised ``RecursionError`` out of
the node's preparation pass (issue 16, item 2): the honest updates queued behind it never got a
verdict and the round never closed, not even at its deadline. The real ``Node._prepare_once``
runs here on a stand-in node (no processes, no network) over the in-memory founders' chain.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bcfl_cli.chain import ChainState
from bcfl_cli.chain.checks import VerdictLike
from bcfl_cli.errors import BlobError
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.round_driver import AggregateKey, build_proposal, compute_aggregate, plan_block
from bcfl_cli.node.server import Node
from bcfl_cli.node.sync import CachingChecks
from bcfl_cli.protocol.tx import Transaction, TxKind
from tests.node._chain_fixture import Chain, key, make_chain

NESTED = struct.pack("<Q", 5000) + b"[" * 5000


class Mempool:
    def __init__(self, txs: list[Transaction]) -> None:
        self.txs = txs

    def snapshot(self) -> list[Transaction]:
        return list(self.txs)


class Syncer:
    async def ensure_blobs(self, digests: list[str], **kw: Any) -> bool:
        return True


class Driver:
    def poke(self) -> None:
        pass


class Broken(FLChecks):
    """The contract, except that checking ``victim`` fails (a corrupt local copy, say)."""

    victim = ""

    def check_update(self, state: ChainState, tx: Transaction) -> Any:
        if tx.hash == self.victim:
            raise BlobError(f"blob of {tx.hash[:16]} is corrupt here")
        return super().check_update(state, tx)


class StubNode:
    """What ``Node._prepare_once`` reads of a node, with the real methods it calls."""

    _prepare_once = Node._prepare_once
    _aggregates_wanted = Node._aggregates_wanted
    prepared_verdict = Node.prepared_verdict
    prepared_aggregate = Node.prepared_aggregate

    def __init__(self, chain: Chain, pending: list[Transaction], checks: FLChecks) -> None:
        self.state = chain.state
        self.mempool = Mempool(pending)
        self.checks = CachingChecks(checks)
        self.syncer = Syncer()
        self.blobs = chain.blobs
        self.driver = Driver()
        self.key = key("alice")
        self.clock = Clock()
        self._validations: dict[Any, Transaction] = {}
        self._aggregates: dict[AggregateKey, tuple[str, int]] = {}
        self._computing = False

    async def run_worker(self, fn: Any) -> Any:
        return fn()

    def wake_prepare(self) -> None:
        pass

    def verdict(self, tx: Transaction) -> VerdictLike | None:
        return self.checks.known_verdict(self.state, tx)


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
    node = StubNode(chain, [hostile, *honest], FLChecks(chain.blobs))
    asyncio.run(node._prepare_once())
    verdict = node.verdict(hostile)
    assert verdict is not None and (verdict.accept, verdict.reason) == (False, "malformed_blob")
    assert all((v := node.verdict(tx)) is not None and v.accept for tx in honest)
    assert node._aggregates, "the aggregate the honest updates complete was not prepared"
    txs = plan_block(
        node.state,
        node.mempool.snapshot(),
        height=node.state.height + 1,
        key=node.key,
        now_ms=chain.now(),
        verdict_of=node.prepared_verdict,
        aggregate_of=node.prepared_aggregate,
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
    node = StubNode(chain, [victim, *honest], checks)
    asyncio.run(node._prepare_once())  # no exception escapes
    assert node.verdict(victim) is None
    assert all((v := node.verdict(tx)) is not None and v.accept for tx in honest)
    assert node._aggregates


def test_the_round_closes_at_its_deadline_when_its_only_update_cannot_be_checked(
    chain: Chain,
) -> None:
    _open_round(chain)
    victim = chain.update("dave", scale=0.03)
    while chain.state.height < chain.state.round.deadline_height:
        _commit(chain, [])
    checks = Broken(chain.blobs)
    checks.victim = victim.hash
    node = StubNode(chain, [victim], checks)
    asyncio.run(node._prepare_once())
    txs = plan_block(
        node.state,
        node.mempool.snapshot(),
        height=node.state.height + 1,
        key=node.key,
        now_ms=chain.now(),
        verdict_of=node.prepared_verdict,
        aggregate_of=node.prepared_aggregate,
    )
    assert [tx.kind for tx in txs] == [TxKind.AGGREGATE, TxKind.OPEN_ROUND]
    _commit(chain, txs)
    assert chain.state.round.number == 2
