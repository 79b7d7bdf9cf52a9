"""verify_chain on honest chains, and the first fault it names on broken ones."""

from __future__ import annotations

import pytest

import bcfl_cli.verify.chain as verify_module
from bcfl_cli.protocol.encoding import canonical, parse_json
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import verify_chain
from tests.chain.factories import did_for, drop_triggers, make_consortium, realistic_chain


def test_honest_chain_verifies(tmp_path):
    c = realistic_chain(tmp_path)
    report = verify_chain(c.ledger, workers=1)
    assert report.ok, report.fault
    assert report.height == 5 and report.head == c.ledger.head().hash
    assert report.tx_kinds == {
        "join_request": 1,
        "approve_member": 2,
        "open_round": 1,
        "update": 3,
        "validation": 3,
        "aggregate": 1,
    }
    assert report.blobs == 2 + 2 + 1  # genesis document + initial model, 2 updates, 1 aggregate
    assert report.signatures == 11 + 4 * 5
    assert report.to_dict()["ok"] is True


def test_missing_blob_is_named(tmp_path):
    c = realistic_chain(tmp_path)
    aggregate = c.blocks[-1].txs[0]
    c.ledger.blobs.path_for(aggregate.body["model"]).unlink()
    report = verify_chain(c.ledger, workers=1)
    assert (report.fault.height, report.fault.tx, report.fault.code) == (
        5,
        aggregate.hash,
        "blob_missing",
    )
    assert report.height == 4


def _long_chain(tmp_path, blocks: int):
    c = make_consortium(tmp_path)
    for i in range(blocks):
        txs = []
        if i % 3 == 0:
            vote_free = {"member": did_for("dave"), "reason": f"r{i}"}
            txs = [c.tx("bob", TxKind.REMOVE_MEMBER, vote_free)] if i == 0 else []
        c.commit(txs, proposer=("alice", "bob", "carol", "dave")[i % 4])
    return c


def _rewrite_sig(c, height: int) -> None:
    conn = drop_triggers(c.home.store_file)
    (text,) = conn.execute('SELECT "commit" FROM blocks WHERE height=?', (height,)).fetchone()
    commit = parse_json(text)
    sig = commit["sigs"][1]["sig"]
    commit["sigs"][1]["sig"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")
    conn.execute(
        'UPDATE blocks SET "commit"=? WHERE height=?', (canonical(commit).decode(), height)
    )
    conn.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_parallel_and_sequential_agree(tmp_path, monkeypatch, workers):
    monkeypatch.setattr(verify_module, "PARALLEL_MIN_BLOCKS", 20)
    monkeypatch.setattr(verify_module, "CHUNK_BLOCKS", 8)
    c = _long_chain(tmp_path, 40)
    seen = []
    report = verify_chain(c.ledger, workers=workers, progress=lambda h, top: seen.append(h))
    assert report.ok, report.fault
    assert report.signatures == 1 + 40 * 4
    assert seen[-1] == 40
    _rewrite_sig(c, 27)
    report = verify_chain(c.ledger, workers=workers)
    assert (report.fault.height, report.fault.code) == (27, "bad_commit_signature")
    assert report.height == 26


def test_rule_fault_before_signature_fault_wins(tmp_path, monkeypatch):
    monkeypatch.setattr(verify_module, "PARALLEL_MIN_BLOCKS", 20)
    monkeypatch.setattr(verify_module, "CHUNK_BLOCKS", 8)
    c = _long_chain(tmp_path, 30)
    _rewrite_sig(c, 25)
    blob = c.ledger.blobs.path_for(c.state.config.initial_model)
    blob.write_bytes(b"not the model")
    report = verify_chain(c.ledger, workers=2)
    assert (report.fault.height, report.fault.code) == (0, "blob_corrupt")


def test_empty_or_missing_store(tmp_path):
    from bcfl_cli.errors import StoreError
    from bcfl_cli.home import Home

    with pytest.raises(StoreError) as info:
        Ledger.open(Home.resolve(tmp_path / "nothing"))
    assert "bcfl init" in info.value.hint


@pytest.mark.parametrize("workers", [1, 2])
def test_duplicate_misbehaviour_is_named(tmp_path, workers):
    from bcfl_cli.protocol.block import Vote, VoteType
    from tests.chain.factories import key_for

    c = make_consortium(tmp_path)
    votes = [
        Vote(c.chain, 3, 0, VoteType.PREVOTE, b * 32, did_for("dave")).signed(key_for("dave"))
        for b in ("aa", "bb")
    ]
    body = {"offender": did_for("dave"), "votes": [v.to_dict() for v in votes]}
    c.commit([c.tx("alice", TxKind.MISBEHAVIOUR, body)])
    assert verify_chain(c.ledger, workers=workers).ok
    again = c.tx("bob", TxKind.MISBEHAVIOUR, body)
    c.ledger.append(c.next_block([again]))  # a block no honest node would build
    report = verify_chain(c.ledger, workers=workers)
    assert (report.fault.height, report.fault.tx, report.fault.code) == (
        2,
        again.hash,
        "duplicate_evidence",
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_a_block_dated_past_the_time_step_is_named(tmp_path, monkeypatch, workers):
    """Every validator signed a block dated 2^53-1 ms (the chain could have no successor):
    verify-chain names it, whichever block range a worker replays it in."""
    import dataclasses

    from bcfl_cli.chain import commit_with_keys
    from bcfl_cli.protocol.block import Block
    from bcfl_cli.protocol.encoding import MAX_SAFE_INT
    from tests.chain.factories import key_for

    monkeypatch.setattr(verify_module, "PARALLEL_MIN_BLOCKS", 20)
    monkeypatch.setattr(verify_module, "CHUNK_BLOCKS", 8)
    c = _long_chain(tmp_path, 20)
    header = dataclasses.replace(c.next_block([]).header, time=MAX_SAFE_INT)
    signers = [key_for(n) for n in ("alice", "bob", "carol")]  # a quorum of the four
    c.ledger.append(commit_with_keys(Block(header, (), None), signers, c.chain))
    report = verify_chain(c.ledger, workers=workers)
    assert (report.fault.height, report.fault.code) == (21, "time_step_too_large")
    assert report.height == 20
