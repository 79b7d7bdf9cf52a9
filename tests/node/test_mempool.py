"""The mempool holds only what could go in a block, within its bounds, and forgets commits."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from bcfl_cli.node.mempool import Mempool, precheck
from bcfl_cli.node.round_driver import build_proposal
from bcfl_cli.protocol.block import Vote, VoteType
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.wire.refusal import Refusal
from tests.node._chain_fixture import Chain, did, key, make_chain


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = make_chain(tmp_path)
    yield c
    c.ledger.close()


def newcomer(seed: int = 1) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(bytes([seed]) * 32)


def join(chain: Chain, seed: int = 1, name: str = "erin") -> Transaction:
    body = {"name": name, "roles": ["trainer"], "power": 0}
    return make_tx(newcomer(seed), chain.state.chain_id, TxKind.JOIN_REQUEST, body)


def test_admits_once_and_dedupes(chain: Chain) -> None:
    pool = Mempool()
    tx = join(chain)
    assert pool.add(tx, chain.state, now_ms=1) is True
    assert pool.add(tx, chain.state, now_ms=2) is False
    assert len(pool) == 1 and tx.hash in pool and pool.size_bytes > 0


@pytest.mark.parametrize(
    ("mangle", "code"),
    [
        ("signature", "bad_tx_signature"),
        ("chain", "wrong_chain"),
        ("open_round", "proposer_only"),
        ("non_member", "not_member"),
        ("update_no_round", "wrong_round"),
        ("name_taken", "name_taken"),
    ],
)
def test_refuses_what_no_block_could_hold(chain: Chain, mangle: str, code: str) -> None:
    state = chain.state
    if mangle == "signature":
        good = join(chain)
        tx = Transaction.from_dict({"tx": good.unsigned(), "sig": "00" * 64})
    elif mangle == "chain":
        body = {"name": "erin", "roles": ["trainer"], "power": 0}
        tx = make_tx(newcomer(), "ab" * 32, TxKind.JOIN_REQUEST, body)
    elif mangle == "open_round":
        body = {"round": 1, "base_model": state.round.model, "deadline_height": 21}
        tx = chain.tx("alice", TxKind.OPEN_ROUND, body)
    elif mangle == "non_member":
        body = {"member": did("bob"), "reason": "x"}
        tx = make_tx(newcomer(), state.chain_id, TxKind.REMOVE_MEMBER, body)
    elif mangle == "update_no_round":
        tx = chain.update("bob")
    else:
        tx = join(chain, name="alice")
    pool = Mempool()
    with pytest.raises(Refusal) as info:
        pool.add(tx, state, now_ms=1)
    assert info.value.code == code
    assert len(pool) == 0
    assert pool.rejected_reason(tx.hash) == code


def test_bounds_count_and_per_author(chain: Chain) -> None:
    pool = Mempool(max_txs=2)
    pool.add(join(chain, 1, "e1"), chain.state, now_ms=1)
    pool.add(join(chain, 2, "e2"), chain.state, now_ms=1)
    with pytest.raises(Refusal) as info:
        pool.add(join(chain, 3, "e3"), chain.state, now_ms=1)
    assert info.value.code == "mempool_full" and info.value.status == 503

    pool = Mempool(per_author=1)
    first = chain.tx("alice", TxKind.REMOVE_MEMBER, {"member": did("bob"), "reason": "a"})
    second = chain.tx("alice", TxKind.REMOVE_MEMBER, {"member": did("carol"), "reason": "b"})
    pool.add(first, chain.state, now_ms=1)
    with pytest.raises(Refusal) as info:
        pool.add(second, chain.state, now_ms=1)
    assert info.value.code == "too_many_pending" and info.value.status == 429


def test_prune_forgets_committed_and_now_invalid(chain: Chain) -> None:
    pool = Mempool()
    a = join(chain, 1, "frank")
    b = join(chain, 2, "erin")
    pool.add(a, chain.state, now_ms=1)
    pool.add(b, chain.state, now_ms=2)
    # same name: only one of the two can ever be admitted, so the pool holds one (issue 16)
    rival = join(chain, 3, "erin")
    with pytest.raises(Refusal) as info:
        pool.add(rival, chain.state, now_ms=3)
    assert info.value.code == "name_taken"
    # ... and when another node's pool had the rival and it is committed, b is dropped
    block, after = build_proposal(
        chain.state, chain.head, [a, rival], key("alice"), now_ms=chain.now(), checks=None
    )
    chain.commit(block, after)
    dropped = dict(pool.prune(chain.state))
    assert dropped == {a.hash: "already_committed", b.hash: "name_taken"}
    assert len(pool) == 0 and pool.size_bytes == 0
    assert pool.rejected_reason(a.hash) is None  # committed is not rejected
    assert pool.rejected_reason(b.hash) is not None


def test_precheck_admits_a_founder_approval(chain: Chain) -> None:
    a = join(chain)
    block, after = build_proposal(
        chain.state, chain.head, [a], key("alice"), now_ms=chain.now(), checks=None
    )
    chain.commit(block, after)
    who = did_from_public_key(bytes(newcomer().verify_key))
    approve = chain.tx("bob", TxKind.APPROVE_MEMBER, {"member": who, "request": a.hash})
    precheck(chain.state, approve)
    wrong = chain.tx("bob", TxKind.APPROVE_MEMBER, {"member": who, "request": "00" * 32})
    with pytest.raises(Refusal, match="no pending request"):
        precheck(chain.state, wrong)


def _double_vote(chain: Chain, blocks: tuple[str, str] = ("aa", "bb")) -> list[Vote]:
    return [
        Vote(chain.state.chain_id, 7, 0, VoteType.PREVOTE, b * 32, did("dave")).signed(key("dave"))
        for b in blocks
    ]


def test_one_pending_evidence_per_offence(chain: Chain) -> None:
    a, b = _double_vote(chain)
    c = _double_vote(chain, ("cc", "dd"))[0]
    mine = chain.tx(
        "alice", TxKind.MISBEHAVIOUR, {"offender": did("dave"), "votes": [a.to_dict(), b.to_dict()]}
    )
    theirs = chain.tx(
        "bob", TxKind.MISBEHAVIOUR, {"offender": did("dave"), "votes": [b.to_dict(), c.to_dict()]}
    )
    pool = Mempool()
    assert pool.add(mine, chain.state, now_ms=1)
    assert pool.has_evidence((did("dave"), 7, 0, "prevote"))
    assert not pool.has_evidence((did("dave"), 7, 1, "prevote"))
    with pytest.raises(Refusal) as info:
        pool.add(theirs, chain.state, now_ms=2)
    assert (info.value.code, info.value.status) == ("duplicate_evidence", 409)
    block, after = build_proposal(
        chain.state, chain.head, [mine], key("alice"), now_ms=chain.now(), checks=None
    )
    chain.commit(block, after)
    assert dict(pool.prune(chain.state)) == {mine.hash: "already_committed"}
    with pytest.raises(Refusal) as info:
        Mempool().add(theirs, chain.state, now_ms=3)
    assert info.value.code == "duplicate_evidence"


def test_proposal_keeps_one_evidence_per_offence(chain: Chain) -> None:
    """Two nodes' evidence of one double vote: a proposer leaves the second out."""
    a, b = _double_vote(chain)
    body = {"offender": did("dave"), "votes": [a.to_dict(), b.to_dict()]}
    first = chain.tx("alice", TxKind.MISBEHAVIOUR, body)
    second = chain.tx("bob", TxKind.MISBEHAVIOUR, body)
    dropped: list[tuple[str, str]] = []
    block, _ = build_proposal(
        chain.state,
        chain.head,
        [first, second],
        key("alice"),
        now_ms=chain.now(),
        checks=None,
        on_dropped=lambda h, code: dropped.append((h, code)),
    )
    assert [tx.hash for tx in block.txs] == [first.hash]
    assert dropped == [(second.hash, "duplicate_evidence")]
