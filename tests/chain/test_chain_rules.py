"""Chain rules (docs/PROTOCOL.md §6): each rule accepts the honest case and names the fault."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcfl_cli.chain import ChainState, build_block, commit_with_keys
from bcfl_cli.errors import VerificationError
from bcfl_cli.protocol.block import Block, Vote, VoteType
from bcfl_cli.protocol.tx import TxKind, make_tx
from tests.chain.factories import (
    Consortium,
    did_for,
    key_for,
    make_consortium,
    realistic_chain,
    update_body,
    validation,
)


def _fails(c: Consortium, txs, code: str, proposer: str = "alice") -> VerificationError:
    block = c.next_block(txs, proposer)
    with pytest.raises(VerificationError) as info:
        c.state.apply(block)
    assert info.value.code == code, info.value.message
    assert info.value.height == block.height
    return info.value


def _open_round(c: Consortium, number: int = 1) -> None:
    h = c.state.height + 1
    c.commit(
        [
            c.tx(
                "alice",
                TxKind.OPEN_ROUND,
                {
                    "round": number,
                    "base_model": c.state.round.model,
                    "deadline_height": h + c.state.config.training.deadline_blocks,
                },
            )
        ]
    )


def test_realistic_chain_replays(tmp_path):
    c = realistic_chain(tmp_path)
    assert c.ledger.height == 5
    assert c.state.member(did_for("erin")).is_trainer
    assert not c.state.round.open and c.state.round.number == 1
    replay = ChainState.from_genesis(c.ledger.block(0), c.ledger.document)
    for block in c.ledger.blocks(1):
        replay = replay.apply(block)
    assert replay.round == c.state.round
    assert len(replay.seen_tx) == c.ledger.tx_count()


def test_apply_leaves_the_old_state_usable(tmp_path):
    c = make_consortium(tmp_path)
    before = c.state
    join = c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})
    block = c.next_block([join])
    after = before.apply(block)
    assert join.hash in after.seen_tx and join.hash not in before.seen_tx
    assert did_for("erin") in after.pending and did_for("erin") not in before.pending
    assert before.apply(block).height == 1


def test_replayed_and_foreign_transactions_fail(tmp_path):
    c = make_consortium(tmp_path)
    join = c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})
    c.commit([join])
    err = _fails(c, [join], "replayed_tx")
    assert err.tx_hash == join.hash
    foreign = make_tx(
        key_for("bob"), "ab" * 32, TxKind.REMOVE_MEMBER, {"member": did_for("carol"), "reason": ""}
    )
    _fails(c, [foreign], "wrong_chain")


def test_bad_signature_fails(tmp_path):
    c = make_consortium(tmp_path)
    tx = c.tx("bob", TxKind.REMOVE_MEMBER, {"member": did_for("carol"), "reason": ""})
    forged = type(tx)(tx.chain, tx.kind, tx.author, tx.nonce, tx.time, tx.body, "00" * 64)
    _fails(c, [forged], "bad_tx_signature")


def test_admission_needs_distinct_validator_approvals(tmp_path):
    c = make_consortium(tmp_path)
    join = c.tx(
        "erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer", "validator"], "power": 1}
    )
    c.commit([join])
    _fails(
        c,
        [c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin2", "roles": ["trainer"], "power": 0})],
        "request_pending",
    )
    _fails(
        c,
        [c.tx("frank", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})],
        "name_taken",
    )
    approve = {"member": did_for("erin"), "request": join.hash}
    _fails(
        c,
        [
            c.tx("alice", TxKind.APPROVE_MEMBER, approve),
            c.tx("alice", TxKind.APPROVE_MEMBER, approve),
        ],
        "duplicate_approval",
    )
    _fails(
        c,
        [c.tx("alice", TxKind.APPROVE_MEMBER, {**approve, "request": "ab" * 32})],
        "wrong_request",
    )
    _fails(c, [c.tx("erin", TxKind.APPROVE_MEMBER, approve)], "not_member")
    c.commit([c.tx("alice", TxKind.APPROVE_MEMBER, approve)])
    assert c.state.member(did_for("erin")) is None
    before_set = c.state.validator_set
    c.commit([c.tx("bob", TxKind.APPROVE_MEMBER, approve)])
    assert c.state.member(did_for("erin")).is_validator
    # effective from the next height: the block that admitted erin carries the old set
    assert c.blocks[-1].header.validators == before_set.hash
    assert did_for("erin") in c.state.validator_set
    # now a 5-validator set: 4 of 5 signatures are a quorum, 3 are not
    block = build_block(c.state, c.ledger.head(), [], key_for("erin"), time_ms=c.clock + 100)
    keys = [key_for(n) for n in ("alice", "bob", "carol")]
    with pytest.raises(VerificationError) as info:
        c.state.apply(commit_with_keys(block, keys, c.chain))
    assert info.value.code == "no_quorum"
    c.state.apply(commit_with_keys(block, [*keys, key_for("erin")], c.chain))
    _fails(
        c,
        [c.tx("erin", TxKind.JOIN_REQUEST, {"name": "x", "roles": ["trainer"], "power": 0})],
        "already_member",
    )


def test_removal_and_last_validator(tmp_path):
    c = make_consortium(
        tmp_path,
        members=(("alice", ["trainer", "validator"], 1), ("bob", ["trainer"], 0)),
        removal_approvals=1,
    )
    _fails(
        c,
        [c.tx("bob", TxKind.REMOVE_MEMBER, {"member": did_for("alice"), "reason": ""})],
        "not_validator",
    )
    _fails(
        c,
        [c.tx("alice", TxKind.REMOVE_MEMBER, {"member": did_for("alice"), "reason": ""})],
        "last_validator",
    )
    c.commit([c.tx("alice", TxKind.REMOVE_MEMBER, {"member": did_for("bob"), "reason": "left"})])
    assert not c.state.member(did_for("bob")).active
    _fails(
        c,
        [c.tx("bob", TxKind.JOIN_REQUEST, {"name": "bob2", "roles": ["trainer"], "power": 0})],
        "removed_member",
    )


def test_the_trainers_kept_with_a_state_follow_every_change(tmp_path):
    """``trainers`` is kept with the state it was asked of; a state derived from it after a
    removal answers for itself (the kept set never leaks into the next state)."""
    c = make_consortium(
        tmp_path,
        members=(("alice", ["trainer", "validator"], 1), ("bob", ["trainer"], 0)),
        removal_approvals=1,
    )
    before = c.state
    assert before.trainers == {did_for("alice"), did_for("bob")}
    assert before.trainers is before.trainers  # kept, not built again
    c.commit([c.tx("alice", TxKind.REMOVE_MEMBER, {"member": did_for("bob"), "reason": "left"})])
    assert c.state.trainers == {did_for("alice")}
    assert before.trainers == {did_for("alice"), did_for("bob")}  # the old state unchanged


def test_block_rules(tmp_path):
    c = make_consortium(tmp_path)
    good = c.next_block([])
    h = good.header

    def variant(**changes):
        header = dataclasses.replace(h, **changes)
        keys = [key_for(n) for n in ("alice", "bob", "carol", "dave")]
        return commit_with_keys(Block(header, (), None), keys, c.chain)

    cases = {
        "wrong_height": variant(height=2),
        "wrong_prev": variant(prev="ab" * 32),
        "time_not_increasing": variant(time=c.genesis.header.time),
        "tx_root_mismatch": variant(tx_root="ab" * 32),
        "wrong_validator_set": variant(validators="ab" * 32),
        "proposer_not_validator": variant(proposer=did_for("zed")),
        "wrong_config": variant(config="ab" * 32),
    }
    for code, block in cases.items():
        with pytest.raises(VerificationError) as info:
            c.state.apply(block)
        assert info.value.code == code
    with pytest.raises(VerificationError) as info:
        c.state.apply(Block(good.header, (), None))
    assert info.value.code == "missing_commit"
    outsider = commit_with_keys(
        Block(good.header, (), None),
        [key_for(n) for n in ("alice", "bob", "carol", "zed")],
        c.chain,
    )
    with pytest.raises(VerificationError) as info:
        c.state.apply(outsider)
    assert info.value.code == "commit_signer_unknown"
    two = commit_with_keys(
        Block(good.header, (), None), [key_for("alice"), key_for("bob")], c.chain
    )
    with pytest.raises(VerificationError) as info:
        c.state.apply(two)
    assert info.value.code == "no_quorum"
    other = commit_with_keys(
        Block(good.header, (), None), [key_for(n) for n in ("alice", "bob", "carol")], "cd" * 32
    )
    with pytest.raises(VerificationError) as info:
        c.state.apply(other)
    assert info.value.code == "bad_commit_signature"
    assert c.state.apply(good).height == 1


def test_round_rules(tmp_path):
    c = make_consortium(tmp_path)
    model = c.state.round.model
    _fails(
        c,
        [c.tx("bob", TxKind.OPEN_ROUND, {"round": 1, "base_model": model, "deadline_height": 6})],
        "not_proposer",
    )
    _fails(
        c,
        [c.tx("alice", TxKind.OPEN_ROUND, {"round": 2, "base_model": model, "deadline_height": 6})],
        "round_out_of_sequence",
    )
    _fails(
        c,
        [
            c.tx(
                "alice",
                TxKind.OPEN_ROUND,
                {"round": 1, "base_model": "ab" * 32, "deadline_height": 6},
            )
        ],
        "wrong_base_model",
    )
    _fails(
        c,
        [c.tx("alice", TxKind.OPEN_ROUND, {"round": 1, "base_model": model, "deadline_height": 7})],
        "wrong_deadline",
    )
    u = c.tx("bob", TxKind.UPDATE, update_body(c, 1, b"x" * 10))
    _fails(c, [u, validation(c, u)], "round_not_open")
    _open_round(c)
    _fails(
        c,
        [c.tx("alice", TxKind.OPEN_ROUND, {"round": 2, "base_model": model, "deadline_height": 7})],
        "round_already_open",
    )
    u = c.tx("bob", TxKind.UPDATE, update_body(c, 1, b"x" * 10))
    _fails(c, [u], "missing_validation")
    _fails(
        c,
        [
            u,
            c.tx(
                "alice", TxKind.OPEN_ROUND, {"round": 2, "base_model": model, "deadline_height": 7}
            ),
        ],
        "missing_validation",
    )
    _fails(c, [validation(c, u)], "orphan_validation")
    _fails(c, [u, validation(c, u, proposer="bob")], "not_proposer")
    agg = {
        "round": 1,
        "updates": [],
        "rule": "fedavg",
        "params": c.state.config.aggregation_params,
        "model": model,
        "model_size": 1,
    }
    _fails(c, [c.tx("alice", TxKind.AGGREGATE, agg)], "aggregate_too_early")
    c.commit([u, validation(c, u, "reject")])
    _fails(c, [c.tx("bob", TxKind.UPDATE, update_body(c, 1, b"y" * 10))], "duplicate_update")
    u2 = c.tx("carol", TxKind.UPDATE, update_body(c, 1, b"z" * 10))
    u3 = c.tx("dave", TxKind.UPDATE, update_body(c, 1, b"w" * 10))
    c.commit([u2, validation(c, u2), u3, validation(c, u3)])
    assert c.state.round.accepted_hashes == sorted([u2.hash, u3.hash])
    agg = {**agg, "updates": sorted([u2.hash, u3.hash]), "model": "cd" * 32}
    _fails(c, [c.tx("alice", TxKind.AGGREGATE, {**agg, "updates": [u2.hash]})], "wrong_update_set")
    _fails(c, [c.tx("alice", TxKind.AGGREGATE, {**agg, "rule": "median"})], "wrong_rule")
    _fails(c, [c.tx("alice", TxKind.AGGREGATE, {**agg, "params": {}})], "wrong_params")
    _fails(c, [c.tx("alice", TxKind.AGGREGATE, {**agg, "round": 2})], "wrong_round")
    c.commit([c.tx("alice", TxKind.AGGREGATE, agg)])
    assert c.state.round.model == "cd" * 32 and not c.state.round.open
    _fails(
        c,
        [
            c.tx(
                "alice",
                TxKind.OPEN_ROUND,
                {"round": 2, "base_model": model, "deadline_height": c.state.height + 6},
            )
        ],
        "wrong_base_model",
    )


def test_empty_round_closes_at_deadline_with_base_model(tmp_path):
    c = make_consortium(tmp_path)
    _open_round(c)
    for _ in range(4):
        c.commit([])
    base = c.state.round.base_model
    agg = {
        "round": 1,
        "updates": [],
        "rule": "fedavg",
        "params": c.state.config.aggregation_params,
        "model": "cd" * 32,
        "model_size": 1,
    }
    _fails(c, [c.tx("alice", TxKind.AGGREGATE, agg)], "empty_aggregate_model")
    c.commit([c.tx("alice", TxKind.AGGREGATE, {**agg, "model": base})])
    assert c.state.round.model == base


def test_a_round_may_close_once_every_trainer_has_sent_its_update(tmp_path):
    # min_updates 2, four trainers: three rejected and one accepted leaves the round short of
    # its quorum, but nobody else can send an update this round, so it need not wait for the
    # deadline; one trainer still to send keeps it open
    c = make_consortium(tmp_path)
    _open_round(c)
    assert not c.state.round_may_close(c.state.height + 1, c.state.head_time + 1)
    sent = []
    for name, payload in [("alice", b"a"), ("bob", b"b"), ("carol", b"c")]:
        u = c.tx(name, TxKind.UPDATE, update_body(c, 1, payload * 10))
        sent += [u, validation(c, u, "reject")]
    c.commit(sent)
    agg = {
        "round": 1,
        "updates": [],
        "rule": "fedavg",
        "params": c.state.config.aggregation_params,
        "model": c.state.round.base_model,
        "model_size": 1,
    }
    assert c.state.height + 1 < c.state.round.deadline_height
    _fails(c, [c.tx("alice", TxKind.AGGREGATE, agg)], "aggregate_too_early")
    u = c.tx("dave", TxKind.UPDATE, update_body(c, 1, b"d" * 10))
    c.commit([u, validation(c, u)])
    assert len(c.state.round.accepted) == 1 < c.state.config.training.min_updates
    assert c.state.round_may_close(c.state.height + 1, c.state.head_time + 1)
    agg = {**agg, "updates": [u.hash], "model": "cd" * 32}
    c.commit([c.tx("alice", TxKind.AGGREGATE, agg)])
    assert not c.state.round.open and c.state.round.model == "cd" * 32


class _Checks:
    def __init__(self, accept: bool):
        self.accept = accept
        self.aggregates = 0

    def check_update(self, state, tx):
        from bcfl_cli.fl.contract import Verdict

        return Verdict.ok() if self.accept else Verdict.reject("norm_exceeded", "big")

    def check_aggregate(self, state, tx):
        from bcfl_cli.errors import ContractError

        self.aggregates += 1
        raise ContractError("aggregate_mismatch", "model differs")


def test_deep_checks_decide_verdicts_and_aggregates(tmp_path):
    c = make_consortium(tmp_path)
    _open_round(c)
    u = c.tx("bob", TxKind.UPDATE, update_body(c, 1, b"x" * 10))
    block = c.next_block([u, validation(c, u)])
    c.state.apply(block, checks=_Checks(True))
    with pytest.raises(VerificationError) as info:
        c.state.apply(block, checks=_Checks(False))
    assert info.value.code == "verdict_mismatch"
    c.commit([u, validation(c, u)])
    u2 = c.tx("carol", TxKind.UPDATE, update_body(c, 1, b"y" * 10))
    c.commit([u2, validation(c, u2)])
    agg = {
        "round": 1,
        "updates": sorted([u.hash, u2.hash]),
        "rule": "fedavg",
        "params": c.state.config.aggregation_params,
        "model": "cd" * 32,
        "model_size": 1,
    }
    with pytest.raises(VerificationError) as info:
        c.state.apply(c.next_block([c.tx("alice", TxKind.AGGREGATE, agg)]), checks=_Checks(True))
    assert info.value.code == "aggregate_check_failed"


def test_misbehaviour_evidence_structure(tmp_path):
    c = make_consortium(tmp_path)

    def vote(block, name="dave", **kw):
        v = Vote(c.chain, 5, 0, VoteType.PRECOMMIT, block, did_for(name))
        return Vote(**{**v.__dict__, **kw}).signed(key_for(name)) if kw else v.signed(key_for(name))

    a, b = vote("aa" * 32), vote("bb" * 32)
    good = {"offender": did_for("dave"), "votes": [a.to_dict(), b.to_dict()]}
    c.state.apply(c.next_block([c.tx("alice", TxKind.MISBEHAVIOUR, good)]))
    same = {**good, "votes": [a.to_dict(), a.to_dict()]}
    _fails(c, [c.tx("alice", TxKind.MISBEHAVIOUR, same)], "bad_evidence")
    other_round = vote("bb" * 32, round=1)
    _fails(
        c,
        [
            c.tx(
                "alice",
                TxKind.MISBEHAVIOUR,
                {**good, "votes": [a.to_dict(), other_round.to_dict()]},
            )
        ],
        "bad_evidence",
    )
    forged = {**b.to_dict(), "sig": "00" * 64}
    _fails(
        c,
        [c.tx("alice", TxKind.MISBEHAVIOUR, {**good, "votes": [a.to_dict(), forged]})],
        "bad_evidence",
    )
    _fails(
        c,
        [c.tx("alice", TxKind.MISBEHAVIOUR, {**good, "offender": did_for("carol")})],
        "bad_evidence",
    )
    _fails(
        c,
        [c.tx("alice", TxKind.MISBEHAVIOUR, {**good, "votes": [{"x": 1}, {"y": 2}]})],
        "bad_evidence",
    )


def test_misbehaviour_recorded_once_per_offence(tmp_path):
    """A second misbehaviour tx about the same (offender, height, round, type) is refused."""
    c = make_consortium(tmp_path)

    def vote(block, name="dave", round=0, type=VoteType.PRECOMMIT):
        return Vote(c.chain, 5, round, type, block, did_for(name)).signed(key_for(name))

    a, b, x = vote("aa" * 32), vote("bb" * 32), vote("cc" * 32)
    body = {"offender": did_for("dave"), "votes": [a.to_dict(), b.to_dict()]}
    # Same offence, other votes (b, x), another author: still the same equivocation.
    again = {"offender": did_for("dave"), "votes": [b.to_dict(), x.to_dict()]}
    # Two in one block: the second is refused.
    info = _fails(
        c,
        [c.tx("alice", TxKind.MISBEHAVIOUR, body), c.tx("bob", TxKind.MISBEHAVIOUR, again)],
        "duplicate_evidence",
    )
    assert "already recorded" in info.message
    c.commit([c.tx("alice", TxKind.MISBEHAVIOUR, body)])
    assert (did_for("dave"), 5, 0, "precommit") in c.state.offences
    # In a later block too, whoever writes it.
    for author, evidence in (("bob", again), ("carol", body)):
        _fails(c, [c.tx(author, TxKind.MISBEHAVIOUR, evidence)], "duplicate_evidence")
    # Another round or vote type of the same height is another offence.
    other_round = [vote("aa" * 32, round=1).to_dict(), vote("bb" * 32, round=1).to_dict()]
    prevotes = [
        vote("aa" * 32, type=VoteType.PREVOTE).to_dict(),
        vote("bb" * 32, type=VoteType.PREVOTE).to_dict(),
    ]
    c.commit(
        [
            c.tx("bob", TxKind.MISBEHAVIOUR, {**body, "votes": other_round}),
            c.tx("bob", TxKind.MISBEHAVIOUR, {**body, "votes": prevotes}),
        ]
    )
    assert len(c.state.offences) == 3
    # Replaying the chain from genesis gives the same record (verify-chain applies the rule).
    replay = ChainState.from_genesis(c.ledger.block(0), c.ledger.document)
    for block in c.ledger.blocks(1):
        replay = replay.apply(block)
    assert replay.offences == c.state.offences


def _join(c: Consortium, name: str = "erin"):
    return c.tx(name, TxKind.JOIN_REQUEST, {"name": name, "roles": ["trainer"], "power": 0})


def _approve(c: Consortium, by: str, join, who: str = "erin"):
    return c.tx(by, TxKind.APPROVE_MEMBER, {"member": did_for(who), "request": join.hash})


def test_join_request_expires_after_its_ttl(tmp_path):
    c = make_consortium(tmp_path, join_request_ttl_blocks=3)
    first = _join(c)
    c.commit([first])  # height 1: approvable up to height 1 + 3
    c.commit([])
    c.commit([])
    c.commit([_approve(c, "alice", first)])  # height 4, the last one
    assert did_for("erin") in c.state.pending
    info = _fails(c, [_approve(c, "bob", first)], "request_expired")  # height 5
    assert "expired unapproved at height 5" in info.message and "send a new one" in info.message
    c.commit([])
    assert did_for("erin") not in c.state.pending
    assert c.state.expired_requests[did_for("erin")].expired_at == 5
    # The applicant asks again (its name is free again); old approvals do not carry over.
    again = _join(c)
    c.commit([again])
    assert c.state.pending[did_for("erin")].approvals == frozenset()
    assert did_for("erin") not in c.state.expired_requests
    _fails(c, [_approve(c, "bob", first)], "wrong_request")
    c.commit([_approve(c, "alice", again), _approve(c, "bob", again)])
    assert c.state.member(did_for("erin")).active
    # verify-chain replays the same rule from the genesis document alone
    replay = ChainState.from_genesis(c.ledger.block(0), c.ledger.document)
    for block in c.ledger.blocks(1):
        replay = replay.apply(block)
    assert replay.member(did_for("erin")).since == c.state.height


def test_default_ttl_is_not_in_the_document(tmp_path):
    from bcfl_cli.chain.config import DEFAULT_JOIN_REQUEST_TTL_BLOCKS, parse_document

    c = make_consortium(tmp_path)
    assert "join_request_ttl_blocks" not in c.document["consortium"]
    assert c.state.config.join_request_ttl_blocks == DEFAULT_JOIN_REQUEST_TTL_BLOCKS
    for bad in (0, -1, True, "3", DEFAULT_JOIN_REQUEST_TTL_BLOCKS, 10**9):
        doc = {**c.document, "consortium": {**c.document["consortium"]}}
        doc["consortium"]["join_request_ttl_blocks"] = bad
        with pytest.raises(VerificationError) as info:
            parse_document(doc)
        assert info.value.code == "bad_genesis_document", bad


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(ttl=st.integers(1, 4), gap=st.integers(0, 6), approvals=st.integers(1, 2))
def test_join_request_ttl_property(tmp_path_factory, ttl, gap, approvals):
    """Made at height h, a request is admitted iff its last approval lands by h + ttl; a late
    approval is ``request_expired`` up to h + 2 ttl + 1, then ``no_pending_request``."""
    c = make_consortium(tmp_path_factory.mktemp("ttl"), join_request_ttl_blocks=ttl)
    join = _join(c)
    c.commit([join])
    made = c.state.height
    for _ in range(gap):
        c.commit([])
    txs = [_approve(c, by, join) for by in ("alice", "bob")[:approvals]]
    at = c.state.height + 1
    if at <= made + ttl:
        c.commit(txs)
        assert (c.state.member(did_for("erin")) is not None) == (approvals == 2)
        assert (did_for("erin") in c.state.pending) == (approvals == 1)
    elif at <= made + 2 * ttl + 1:  # the expired request is remembered for one more TTL
        _fails(c, txs, "request_expired")
        c.commit([])
        assert did_for("erin") not in c.state.pending
        if c.state.height <= made + 2 * ttl + 1:
            assert c.state.expired_requests[did_for("erin")].expired_at == made + ttl + 1
    else:  # then forgotten (issue 16: strangers' expired requests must not pile up)
        _fails(c, txs, "no_pending_request")
        c.commit([])
        assert did_for("erin") not in c.state.expired_requests


def test_round_state_shortcuts_equal_dataclasses_replace() -> None:
    """``with_update`` and ``closed_by`` build a RoundState field by field (faster than
    ``dataclasses.replace`` on verify-chain's replay): every field must carry over, including
    one added later."""
    from bcfl_cli.chain.state import AcceptedUpdate, RoundState

    values = {f.name: f"v{i}" for i, f in enumerate(dataclasses.fields(RoundState))}
    rnd = RoundState(**values)  # distinct values: a field swapped or dropped shows
    update = AcceptedUpdate("t", "a", "b", 1, 2)
    assert rnd.with_update((update,), frozenset({"a"})) == dataclasses.replace(
        rnd, accepted=(update,), submitted=frozenset({"a"})
    )
    assert rnd.closed_by("m", 7, 9) == dataclasses.replace(
        rnd, open=False, model="m", closed_at=7, closed_time=9
    )
