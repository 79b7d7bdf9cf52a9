"""Issue 16, item 3 at the node: strangers' join requests are bounded at the route, in the
pool, in a proposal and in what a node relays to its peers."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from bcfl_cli.chain import build_block
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.node.limits import JOIN_RELAY_BURST, JOIN_RELAY_RATE_PER_S
from bcfl_cli.node.mempool import Mempool, precheck
from bcfl_cli.node.round_driver import plan_block
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.wire.refusal import Refusal
from tests.node._chain_fixture import Chain, did, key, make_chain
from tests.node._node_harness import URL, LocalNode

CAP_3 = {"removal_approvals = 3": "removal_approvals = 3\nmax_pending_joins = 3"}


def stranger(i: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(i.to_bytes(4, "big") * 8)


def join_tx(chain_id: str, i: int) -> Transaction:
    body = {"name": f"stranger-{i}", "roles": ["trainer"], "power": 0}
    return make_tx(stranger(i), chain_id, TxKind.JOIN_REQUEST, body)


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = make_chain(tmp_path, edit=CAP_3)
    yield c
    c.ledger.close()


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path)
    harness.auto_mine = False
    yield harness
    harness.close()


def test_join_route_admits_one_per_second_burst_ten_per_address(local: LocalNode) -> None:
    """The documented rate (OPERATIONS.md): every signer is a fresh key, so the address is
    what counts; it admitted 4 per s with a burst of 40 before (the members' 4x factor)."""
    admitted = 0
    limited = 0
    start = time.monotonic()
    for i in range(1, 16):
        tx = join_tx(local.node.genesis_hash, i)
        with SignedClient(
            stranger(i), URL + "/v1", transport=local.client._transport, retries=0
        ) as c:
            try:
                c.post("/join", json_body={"tx": tx.to_dict()})
                admitted += 1
            except Refusal as exc:
                assert exc.status == 429 and exc.code == "rate_limited", exc
                limited += 1
    elapsed = time.monotonic() - start
    assert admitted <= 10 + int(elapsed * 1.0) + 1, (admitted, elapsed)
    assert limited >= 1


def test_join_relay_is_bounded_node_wide(local: LocalNode, monkeypatch) -> None:
    """A node relays strangers' join requests within its budget, not at the members' rate."""
    relayed: list[str] = []
    monkeypatch.setattr(
        local.node.peers, "broadcast", lambda path, body, seen=frozenset(): relayed.append(path)
    )
    start = time.monotonic()
    for i in range(1, 61):
        assert local.node.pool.submit(join_tx(local.node.genesis_hash, i))
    elapsed = time.monotonic() - start
    assert len(local.node.mempool) == 60  # held (a validator proposes them), not all relayed
    assert len(relayed) <= JOIN_RELAY_BURST + elapsed * JOIN_RELAY_RATE_PER_S + 1, (
        len(relayed),
        elapsed,
    )
    # the members' own transactions are relayed as before
    before = len(relayed)
    removal = make_tx(
        key("bob"),
        local.node.genesis_hash,
        TxKind.REMOVE_MEMBER,
        {"member": did("carol"), "reason": "test"},
    )
    assert local.node.pool.submit(removal)
    assert len(relayed) == before + 1


def test_a_busy_non_validator_refuses_joins_it_could_not_relay(
    local: LocalNode, monkeypatch
) -> None:
    """Held by a node that never proposes, an unrelayed request would sit in its pool for ever."""
    monkeypatch.setattr(local.node.peers, "broadcast", lambda *a, **k: None)
    monkeypatch.setattr("bcfl_cli.node.mempool.member_role", lambda state, did: "member")
    codes = []
    for i in range(1, 41):
        try:
            local.node.pool.submit(join_tx(local.node.genesis_hash, i))
        except Refusal as exc:
            codes.append((exc.code, exc.status))
    assert codes and set(codes) == {("join_relay_busy", 503)}
    assert len(local.node.mempool) == 40 - len(codes)


def test_pool_holds_no_more_joins_than_the_chain_has_room_for(chain: Chain) -> None:
    pool = Mempool()
    joins = [join_tx(chain.state.chain_id, i) for i in range(1, 5)]
    for tx in joins[:3]:
        assert pool.add(tx, chain.state, now_ms=1)
    with pytest.raises(Refusal) as info:
        pool.add(joins[3], chain.state, now_ms=1)
    assert info.value.code == "join_requests_full" and info.value.status == 503
    pool.remove([joins[0].hash])  # a slot in the pool frees up
    assert pool.add(joins[3], chain.state, now_ms=1)
    # and a node-wide bound below the chain's room
    small = Mempool(max_joins=1)
    small.add(joins[0], chain.state, now_ms=1)
    with pytest.raises(Refusal):
        small.add(joins[1], chain.state, now_ms=1)


def test_precheck_and_proposal_respect_the_cap_on_chain(chain: Chain) -> None:
    joins = [join_tx(chain.state.chain_id, i) for i in range(1, 7)]
    # a proposer offered more joins than there is room for takes only what fits
    planned = plan_block(
        chain.state,
        joins,
        height=1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=lambda tx: None,
        aggregate_of=lambda s: None,
    )
    included = [t for t in planned if t.kind is TxKind.JOIN_REQUEST]
    assert included == joins[:3]
    block = build_block(chain.state, chain.head, planned, key("alice"), time_ms=chain.now())
    chain.commit(block, chain.state.apply(block, proposal=True))
    assert len(chain.state.pending) == 3
    with pytest.raises(Refusal) as info:
        precheck(chain.state, joins[3])
    assert info.value.code == "join_requests_full"
    later = plan_block(
        chain.state,
        joins[3:],
        height=2,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=lambda tx: None,
        aggregate_of=lambda s: None,
    )
    assert not any(t.kind is TxKind.JOIN_REQUEST for t in later)


def test_one_join_per_applicant_and_per_name_in_pool_and_proposal(tmp_path: Path) -> None:
    """A block holds one request per applicant and per name; each extra one a proposer has to
    leave out costs it a whole re-apply of the block, so neither the pool nor a plan holds it."""
    chain = make_chain(tmp_path)
    try:
        same_key = [
            make_tx(stranger(1), chain.state.chain_id, TxKind.JOIN_REQUEST, body)
            for body in (
                {"name": "stranger-1", "roles": ["trainer"], "power": 0},
                {"name": "another", "roles": ["trainer"], "power": 0},
            )
        ]
        same_name = make_tx(
            stranger(2),
            chain.state.chain_id,
            TxKind.JOIN_REQUEST,
            {"name": "stranger-1", "roles": ["trainer"], "power": 0},
        )
        pool = Mempool()
        assert pool.add(same_key[0], chain.state, now_ms=1)
        for tx, code in ((same_key[1], "request_pending"), (same_name, "name_taken")):
            with pytest.raises(Refusal) as info:
                pool.add(tx, chain.state, now_ms=1)
            assert info.value.code == code
        pool.remove([same_key[0].hash])
        assert pool.add(same_name, chain.state, now_ms=1)  # free again once the first left
        other = join_tx(chain.state.chain_id, 3)
        planned = plan_block(
            chain.state,
            [*same_key, same_name, other],
            height=1,
            key=key("alice"),
            now_ms=chain.now(),
            verdict_of=lambda tx: None,
            aggregate_of=lambda s: None,
        )
        joins = [t for t in planned if t.kind is TxKind.JOIN_REQUEST]
        assert joins == [same_key[0], other]
    finally:
        chain.ledger.close()
