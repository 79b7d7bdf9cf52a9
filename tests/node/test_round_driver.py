"""The proposer's block content follows the round life cycle and always passes the rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bcfl_cli.chain import ChainState
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.node.round_driver import (
    _without,
    build_proposal,
    has_work,
    plan_block,
    state_after_updates,
    updates_still_arriving,
)
from bcfl_cli.node.sync import CachingChecks
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.training.rounds import compute_aggregate
from bcfl_cli.verify.chain import verify_chain
from tests.node._chain_fixture import FOUNDERS, Chain, did, key, make_chain

EDIT = {"min_updates = 2 ": "min_updates = 2 ", "rounds = 10": "rounds = 2"}


@pytest.fixture
def chain(tmp_path: Path) -> Iterator[Chain]:
    c = make_chain(tmp_path, edit=EDIT)
    yield c
    c.ledger.close()


def step(
    chain: Chain, pending: list[Transaction], checks: CachingChecks, *, prepared: bool = True
) -> list[Transaction]:
    """Plan, build and commit the next block as alice; the block's transactions."""
    state = chain.state
    height = state.height + 1
    txs = plan_block(
        state,
        pending,
        height=height,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=(lambda tx: checks.check_update(state, tx)) if prepared else (lambda tx: None),
        aggregate_of=(lambda s: compute_aggregate(s, chain.blobs))
        if prepared
        else (lambda s: None),
    )
    block, after = build_proposal(
        state, chain.head, txs, key("alice"), now_ms=chain.now(), checks=checks
    )
    # the validators' view: the full rules with the real FL checks agree
    state.apply(block, checks=FLChecks(chain.blobs), proposal=True)
    chain.commit(block, after)
    return list(block.txs)


def kinds(txs: list[Transaction]) -> list[str]:
    return [str(t.kind) for t in txs]


def test_a_round_from_open_to_aggregate(chain: Chain) -> None:
    checks = CachingChecks(FLChecks(chain.blobs))
    initial = chain.state.round.model
    assert kinds(step(chain, [], checks)) == ["open_round"]
    rnd = chain.state.round
    assert rnd.open and rnd.number == 1 and rnd.base_model == initial
    assert rnd.deadline_height == 1 + chain.state.config.training.deadline_blocks

    good = chain.update("bob", scale=0.01)
    bad = chain.update("carol", scale=float("nan"))
    waiting = chain.update("dave", scale=0.02)
    # not prepared yet: nothing from the round goes in (the proposer never computes inline)
    assert step(chain, [good, bad], checks, prepared=False) == []
    txs = step(chain, [good, bad], checks)
    assert kinds(txs) == ["update", "validation", "update", "validation"]
    verdicts = {t.body["update"]: (t.body["verdict"], t.body["reason"]) for t in txs[1::2]}
    assert verdicts[good.hash] == ("accept", "ok")
    assert verdicts[bad.hash][0] == "reject"
    assert len(chain.state.round.accepted) == 1

    # the update that completes the quorum, the aggregate it allows and the next round's
    # open_round ride in one block (the rules apply a block's transactions in order)
    late = chain.update("alice", scale=0.03)  # for round 1, but after its quorum
    txs = step(chain, [waiting], checks)
    assert kinds(txs) == ["update", "validation", "aggregate", "open_round"]
    closing = txs[2].body
    assert closing["round"] == 1 and closing["updates"] == sorted([good.hash, waiting.hash])
    rnd = chain.state.round
    assert rnd.open and rnd.number == 2 and rnd.base_model == closing["model"] != initial
    assert rnd.deadline_height == chain.state.height + chain.state.config.training.deadline_blocks
    assert chain.blobs.has(closing["model"])
    assert step(chain, [late], checks) == []  # an update for round 1 fits no more


def test_the_aggregate_waits_for_its_own_block_until_prepared(chain: Chain) -> None:
    checks = CachingChecks(FLChecks(chain.blobs))
    step(chain, [], checks)
    pending = [chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)]
    state = chain.state
    txs = plan_block(
        state,
        pending,
        height=state.height + 1,
        key=key("alice"),
        now_ms=chain.now(),
        verdict_of=lambda tx: checks.check_update(state, tx),
        aggregate_of=lambda s: None,  # verdicts ready, the aggregate after them not yet
    )
    assert kinds(txs) == ["update", "validation"] * 2
    block, after = build_proposal(
        state, chain.head, txs, key("alice"), now_ms=chain.now(), checks=checks
    )
    chain.commit(block, after)
    assert kinds(step(chain, [], checks)) == ["aggregate", "open_round"]
    assert chain.state.round.number == 2 and chain.state.round.open


def test_planning_again_reuses_the_signed_validations(chain: Chain) -> None:
    checks = CachingChecks(FLChecks(chain.blobs))
    step(chain, [], checks)
    pending = [chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)]
    state = chain.state
    signed: dict[tuple[str, str, str, str], Transaction] = {}

    def plan(at: int, keep: dict[tuple[str, str, str, str], Transaction] | None) -> list[str]:
        txs = plan_block(
            state,
            pending,
            height=state.height + 1,
            key=key("alice"),
            now_ms=at,
            verdict_of=lambda tx: checks.check_update(state, tx),
            aggregate_of=lambda s: None,
            signed=keep,
        )
        return [tx.hash for tx in txs if tx.kind is TxKind.VALIDATION]

    first = plan(chain.now(), signed)
    assert len(first) == 2 and len(signed) == 2
    assert plan(chain.now() + 5, signed) == first  # the same signed transactions
    assert set(plan(chain.now() + 5, None)).isdisjoint(first)  # signed afresh without
    # the block built from reused validations is valid
    txs = [tx for pair in zip(pending, signed.values(), strict=True) for tx in pair]
    build_proposal(state, chain.head, txs, key("alice"), now_ms=chain.now() + 9, checks=checks)


def test_state_after_updates_is_what_apply_makes_of_them(chain: Chain) -> None:
    checks = CachingChecks(FLChecks(chain.blobs))
    step(chain, [], checks)
    state = chain.state
    good, bad = chain.update("bob", scale=0.01), chain.update("carol", scale=float("nan"))
    judged = [(tx, checks.check_update(state, tx)) for tx in (good, bad)]
    speculative = state_after_updates(state, judged)
    txs = step(chain, [good, bad], checks)
    assert kinds(txs) == ["update", "validation"] * 2
    assert speculative.round == chain.state.round
    assert state.round.accepted == ()  # the state it was derived from is untouched


def test_open_rounds_stop_when_the_plan_is_done(chain: Chain) -> None:
    checks = CachingChecks(FLChecks(chain.blobs))
    assert kinds(step(chain, [], checks)) == ["open_round"]
    for number in (1, 2):
        txs = step(chain, [chain.update("bob", scale=0.01), chain.update("carol")], checks)
        opened = ["open_round"] if number == 1 else []  # the plan has two rounds
        assert kinds(txs) == ["update", "validation"] * 2 + ["aggregate", *opened]
    assert chain.state.round.number == 2 and not chain.state.round.open
    assert step(chain, [], checks) == []
    state = chain.state
    assert not has_work(
        state,
        [],
        height=state.height + 1,
        now_ms=chain.now(),
        verdict_of=lambda t: None,
        aggregate_of=lambda s: None,
    )
    # and the whole chain, packed blocks included, re-verifies deeply from genesis
    report = verify_chain(chain.ledger, deep=True, checks=FLChecks(chain.blobs), workers=1)
    assert report.ok, report.fault


def test_a_partial_set_of_updates_waits_for_the_others(chain: Chain) -> None:
    checks = CachingChecks(FLChecks(chain.blobs))
    step(chain, [], checks)
    state = chain.state
    bob, carol = chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)

    def work(pending: list[Transaction], prepared: tuple[str, int] | None) -> bool:
        return has_work(
            state,
            pending,
            height=state.height + 1,
            now_ms=chain.now(),
            verdict_of=lambda tx: checks.check_update(state, tx),
            aggregate_of=lambda s: prepared,
        )

    # one update of the two the round needs, two other trainers yet to send: wait (at most
    # the idle interval; the driver then proposes it anyway)
    assert not work([bob], ("00" * 32, 1))
    # the quorum is there: propose as soon as the aggregate after it is prepared
    assert not work([bob, carol], None)
    assert work([bob, carol], ("00" * 32, 1))


def test_updates_still_arriving_counts_while_other_trainers_are_expected(chain: Chain) -> None:
    checks = CachingChecks(FLChecks(chain.blobs))
    assert updates_still_arriving(chain.state, []) is None  # no round open yet
    step(chain, [], checks)
    state = chain.state
    trainers = [n for n in FOUNDERS if did(n) in state.trainers]
    updates = [chain.update(n, scale=0.01 * (i + 1)) for i, n in enumerate(trainers)]
    assert updates_still_arriving(state, []) == 0
    assert updates_still_arriving(state, updates[:1]) == 1
    assert updates_still_arriving(state, updates[:1] * 3) == 1  # one per author
    assert updates_still_arriving(state, updates[:-1]) == len(updates) - 1
    # every trainer's update is in: nothing more to wait for
    assert updates_still_arriving(state, updates) is None


def test_build_proposal_leaves_out_what_the_rules_refuse(chain: Chain) -> None:
    foreign = chain.tx("bob", TxKind.APPROVE_MEMBER, {"member": did("carol"), "request": "00" * 32})
    dropped: list[tuple[str, str]] = []
    block, after = build_proposal(
        chain.state,
        chain.head,
        [foreign],
        key("alice"),
        now_ms=chain.now(),
        checks=None,
        on_dropped=lambda h, code: dropped.append((h, code)),
    )
    assert block.txs == () and dropped == [(foreign.hash, "no_pending_request")]
    assert isinstance(after, ChainState) and after.height == 1


def test_without_keeps_updates_with_their_validation(chain: Chain) -> None:
    a, b, c, d = (
        chain.tx("alice", TxKind.REMOVE_MEMBER, {"member": did("bob"), "reason": str(i)})
        for i in range(4)
    )
    object.__setattr__(a, "kind", TxKind.UPDATE)
    object.__setattr__(c, "kind", TxKind.UPDATE)
    object.__setattr__(b, "kind", TxKind.VALIDATION)
    object.__setattr__(d, "kind", TxKind.VALIDATION)
    assert _without([a, b, c, d], b.hash) == [c, d]
    assert _without([a, b, c, d], c.hash) == [a, b]


def test_updates_whose_blob_the_proposer_lacks_wait_for_a_later_block(chain: Chain) -> None:
    checks = CachingChecks(FLChecks(chain.blobs))
    step(chain, [], checks)  # open
    held, lacked = chain.update("bob", scale=0.01), chain.update("carol", scale=0.02)
    state = chain.state
    height = state.height + 1

    def plan(has_blob: Callable[[str], bool]) -> list[Transaction]:
        return plan_block(
            state,
            [lacked, held],
            height=height,
            key=key("alice"),
            now_ms=chain.now(),
            verdict_of=lambda tx: checks.check_update(state, tx),
            aggregate_of=lambda s: None,
            has_blob=has_blob,
        )

    missing = {lacked.body["blob"]}
    txs = plan(lambda blob: blob not in missing)
    assert kinds(txs) == ["update", "validation"] and txs[0].hash == held.hash
    # both updates complete the quorum (min_updates = 2): work, unless one blob is lacking
    assert has_work(
        state,
        [lacked, held],
        height=height,
        now_ms=chain.now(),
        verdict_of=lambda tx: checks.check_update(state, tx),
        aggregate_of=lambda s: ("00" * 32, 1),
    )
    assert not has_work(
        state,
        [lacked, held],
        height=height,
        now_ms=chain.now(),
        verdict_of=lambda tx: checks.check_update(state, tx),
        aggregate_of=lambda s: ("00" * 32, 1),
        has_blob=lambda blob: blob not in missing,
    )
    # once the blob is here, the update goes in (it was only delayed, never dropped)
    assert [t.hash for t in plan(lambda blob: True)[::2]] == [lacked.hash, held.hash]
