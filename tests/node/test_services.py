"""Services of the node built alone from fakes of their interfaces (issue 17, item 2).

The mempool service admits against the chain's state, gossips what is new and signals it,
and forgets on a commit notification; the blob service asks the likely holders first. No
process, no network: the in-memory founders' chain and recording fakes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.node.blob_service import BlobService
from bcfl_cli.node.clock import Clock
from bcfl_cli.node.mempool import Mempool, MempoolService
from bcfl_cli.node.peers import PeerInfo
from bcfl_cli.node.round_driver import build_proposal, plan_block
from bcfl_cli.node.sync import CachingChecks
from bcfl_cli.protocol.block import Block, ValidatorSet
from bcfl_cli.training.rounds import compute_aggregate
from tests.node._chain_fixture import Chain, did, key, make_chain


class Head:
    """The in-memory chain as a ``ChainView``: its state moves as blocks are committed."""

    def __init__(self, chain: Chain) -> None:
        self._chain = chain
        self.genesis_hash = chain.ledger.block(0).hash
        self.alarm: dict[str, Any] | None = None
        self.on_commit: list[Callable[[Block], None]] = []

    @property
    def state(self) -> Any:
        return self._chain.state

    @property
    def head(self) -> Block:
        return self._chain.head

    def block(self, height: int) -> Block:
        return self._chain.ledger.block(height)

    def head_hash_at(self, height: int) -> str | None:
        return self.block(height).hash if height <= self.state.height else None

    def validator_set_at(self, height: int) -> ValidatorSet | None:
        return self.state.validator_set

    async def wait_for_round(self, number: int, timeout_s: float) -> bool:
        return self.state.round.number >= number


class Gossip:
    def __init__(self, peers: list[PeerInfo] | None = None) -> None:
        self.sent: list[tuple[str, Any, frozenset[str] | None]] = []
        self.peers = peers or []

    def live(self) -> list[PeerInfo]:
        return list(self.peers)

    def broadcast(self, path: str, payload: Any, *, seen: frozenset[str] | None = None) -> None:
        self.sent.append((path, payload, seen))

    async def get(self, peer: PeerInfo, path: str, **kw: Any) -> Any:
        return {}


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = make_chain(tmp_path, edit={"rounds = 10": "rounds = 2"})
    yield c
    c.ledger.close()


def _commit(chain: Chain, txs: list[Any]) -> Block:
    block, after = build_proposal(
        chain.state, chain.head, txs, key("alice"), now_ms=chain.now(), checks=None
    )
    chain.commit(block, after)
    return block


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


def test_the_mempool_service_gossips_and_signals_what_is_new_and_forgets_on_commit(
    chain: Chain,
) -> None:
    _open_round(chain)
    gossip = Gossip()
    pool = MempoolService(Mempool(), Head(chain), gossip, did=did("alice"), clock=Clock())
    signals: list[str] = []
    pool.on_added.append(lambda: signals.append("added"))
    update = chain.update("bob", scale=0.01)
    told = frozenset({"bob-tag"})
    assert pool.submit(update, seen=told)
    assert not pool.submit(update)  # already pending: neither gossiped nor signalled again
    assert gossip.sent == [("/v1/txs", {"tx": update.to_dict()}, told)]
    assert signals == ["added"] and update.hash in pool and len(pool) == 1
    pool.drop(update.hash, "left_out")
    assert pool.rejected_reason(update.hash) == "left_out" and len(pool) == 0
    assert pool.submit(update)
    checks = CachingChecks(FLChecks(chain.blobs))
    state = chain.state
    txs = plan_block(
        state,
        pool.snapshot(),
        height=state.height + 1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=lambda tx: checks.check_update(state, tx),
        aggregate_of=lambda s: None,
    )
    block, after = build_proposal(
        state, chain.head, txs, key("alice"), now_ms=chain.now(), checks=checks
    )
    assert update.hash in {tx.hash for tx in block.txs}
    chain.commit(block, after)
    pool.on_commit(block)  # the commit notification
    assert len(pool) == 0 and pool.rejected_reason(update.hash) is None


class Peers(Gossip):
    """Peers that serve no blob: every request is recorded, in the order asked."""

    def __init__(self, peers: list[PeerInfo]) -> None:
        super().__init__(peers)
        self.asked: list[str] = []

    def blob_client(
        self, peer: PeerInfo, *, download: bool = False, timeout_s: float | None = None
    ) -> SignedClient:
        self.asked.append(peer.url)
        raise OSError("no route")


def test_the_blob_service_asks_the_likely_holders_first(chain: Chain) -> None:
    peers = Peers([PeerInfo(f"http://{n}", did=did(n)) for n in ("alice", "bob", "carol")])
    service = BlobService(peers, chain.blobs, max_blob_bytes=lambda: 1 << 20)
    held = chain.blobs.put(b"held")
    assert asyncio.run(service.ensure_blobs([held]))  # held here: no peer asked
    assert peers.asked == []
    prefer = {"ab" * 32: (did("carol"), did("bob"))}
    assert not asyncio.run(service.ensure_blobs(["ab" * 32], timeout_s=5.0, prefer=prefer))
    assert peers.asked == ["http://carol", "http://bob", "http://alice"]
