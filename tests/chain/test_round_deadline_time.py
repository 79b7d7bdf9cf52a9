"""A round's deadline in block time (``training.round_deadline_s``, PROTOCOL.md §6.3).

The ``open_round`` of such a plan names ``deadline_time`` = its block's time + the plan's
seconds; an ``aggregate`` short of its quorum is valid only in a block whose time has reached
it, and verify-chain re-checks that on a stored chain.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcfl_cli.chain import build_block, commit_with_keys
from bcfl_cli.chain.state import (
    MAX_BLOCK_TIME_STEP_MS,
    MAX_CLOCK_LAG_MS,
    check_proposal_time,
)
from bcfl_cli.errors import EncodingError, VerificationError
from bcfl_cli.node.round_driver import plan_block
from bcfl_cli.protocol.spec import MAX_ROUND_DEADLINE_S, MIN_ROUND_DEADLINE_S, TrainingPlan
from bcfl_cli.protocol.tx import TxKind, validate_body
from bcfl_cli.verify.chain import verify_chain
from tests.chain.factories import Consortium, key_for, make_consortium

DEADLINE_S = 600
TIMED = {"min_updates": 2, "round_deadline_s": DEADLINE_S}


def _consortium(tmp_path, training: dict[str, Any] | None = None) -> Consortium:
    return make_consortium(tmp_path, training=training or TIMED)


def _block_at(c: Consortium, txs, time_ms: int):
    """The next block with time ``time_ms`` (not applied), committed by every validator."""
    block = build_block(c.state, c.ledger.head(), txs, key_for("alice"), time_ms=time_ms)
    return commit_with_keys(block, [key_for(n) for n in c.names()], c.chain)


def _open(c: Consortium, time_ms: int, **body: Any) -> None:
    txs = [
        c.tx(
            "alice",
            TxKind.OPEN_ROUND,
            {"round": 1, "base_model": c.state.round.model, "deadline_height": 0, **body},
        )
    ]
    block = _block_at(c, txs, time_ms)
    c.state = c.state.apply(block)
    c.ledger.append(block)


def _empty_aggregate(c: Consortium):
    rnd = c.state.round
    body = {
        "round": rnd.number,
        "updates": [],
        "rule": "fedavg",
        "params": c.state.config.aggregation_params,
        "model": rnd.base_model,
        "model_size": 1,
    }
    return c.tx("alice", TxKind.AGGREGATE, body)


def test_open_round_names_its_deadline_time_from_its_own_block(tmp_path):
    c = _consortium(tmp_path)
    t = c.state.head_time + 1000
    for body, code in (
        ({}, "wrong_deadline_time"),  # the plan has a deadline in seconds: it must be named
        ({"deadline_time": t + DEADLINE_S * 1000 + 1}, "wrong_deadline_time"),
        ({"deadline_time": t + DEADLINE_S * 1000, "deadline_height": 21}, "wrong_deadline"),
    ):
        txs = [
            c.tx(
                "alice",
                TxKind.OPEN_ROUND,
                {"round": 1, "base_model": c.state.round.model, "deadline_height": 0, **body},
            )
        ]
        with pytest.raises(VerificationError) as info:
            c.state.apply(_block_at(c, txs, t))
        assert info.value.code == code, info.value.message
    _open(c, t, deadline_time=t + DEADLINE_S * 1000)
    rnd = c.state.round
    assert rnd.open and rnd.deadline_time == t + DEADLINE_S * 1000 and rnd.deadline_height == 0


def test_a_plan_in_blocks_refuses_a_deadline_time(tmp_path):
    c = _consortium(tmp_path, {"min_updates": 2, "deadline_blocks": 5})
    t = c.state.head_time + 1000
    txs = [
        c.tx(
            "alice",
            TxKind.OPEN_ROUND,
            {
                "round": 1,
                "base_model": c.state.round.model,
                "deadline_height": 6,
                "deadline_time": t + 1,
            },
        )
    ]
    with pytest.raises(VerificationError) as info:
        c.state.apply(_block_at(c, txs, t))
    assert info.value.code == "wrong_deadline_time"


def test_a_round_short_of_its_quorum_closes_only_once_block_time_reaches_the_deadline(tmp_path):
    c = _consortium(tmp_path)
    t = c.state.head_time + 1000
    deadline = t + DEADLINE_S * 1000
    _open(c, t, deadline_time=deadline)
    # however many blocks pass, the round stays open until the block time reaches the deadline
    for _ in range(30):
        block = _block_at(c, [], c.state.head_time + 1)
        c.state = c.state.apply(block)
        c.ledger.append(block)
    assert not c.state.round_may_close(c.state.height + 1, deadline - 1)
    with pytest.raises(VerificationError) as info:
        c.state.apply(_block_at(c, [_empty_aggregate(c)], deadline - 1))
    assert info.value.code == "aggregate_too_early"
    assert f"time {deadline}" in info.value.message
    assert c.state.round_may_close(c.state.height + 1, deadline)
    block = _block_at(c, [_empty_aggregate(c)], deadline)
    c.state = c.state.apply(block)
    rnd = c.state.round
    assert not rnd.open and (rnd.closed_at, rnd.closed_time) == (block.height, deadline)


def test_with_both_deadlines_whichever_comes_first_closes_the_round(tmp_path):
    c = _consortium(tmp_path, {"min_updates": 2, "deadline_blocks": 3, "round_deadline_s": 60})
    t = c.state.head_time + 1000
    _open(c, t, deadline_time=t + 60_000, deadline_height=1 + 3)
    assert c.state.round_may_close(4, t + 1)  # the height comes first
    assert c.state.round_may_close(2, t + 60_000)  # the time comes first
    assert not c.state.round_may_close(3, t + 59_999)


def test_verify_chain_refuses_a_stored_round_closed_before_its_deadline_time(tmp_path):
    c = _consortium(tmp_path)
    t = c.state.head_time + 1000
    _open(c, t, deadline_time=t + DEADLINE_S * 1000)
    # a block the rules refuse, appended as if consensus had decided it (a forged store)
    early = _block_at(c, [_empty_aggregate(c)], t + 1000)
    c.ledger.append(early)
    report = verify_chain(c.ledger, workers=1)
    assert not report.ok
    assert report.fault is not None
    assert (report.fault.height, report.fault.code) == (early.height, "aggregate_too_early")


def test_the_finished_plan_is_a_state_of_the_chain(tmp_path):
    c = _consortium(tmp_path, {"min_updates": 2, "round_deadline_s": 60, "rounds": 1})
    t = c.state.head_time + 1000
    _open(c, t, deadline_time=t + 60_000)
    assert not c.state.plan_finished
    assert c.state.plan_progress()["finished"] is False
    block = _block_at(c, [_empty_aggregate(c)], t + 60_000)
    c.state = c.state.apply(block)
    assert c.state.plan_finished
    assert c.state.plan_progress() == {
        "rounds": 1,
        "finished": True,
        "finished_height": block.height,
        "finished_time": t + 60_000,
    }
    c.ledger.append(block)
    # no round opens after the last one
    txs = [
        c.tx(
            "alice",
            TxKind.OPEN_ROUND,
            {"round": 2, "base_model": c.state.round.model, "deadline_height": 0},
        )
    ]
    with pytest.raises(VerificationError) as info:
        c.state.apply(_block_at(c, txs, c.state.head_time + 1))
    assert info.value.code == "training_finished"


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    blocks=st.one_of(st.none(), st.integers(1, 1_000_000)),
    seconds=st.one_of(st.none(), st.integers(MIN_ROUND_DEADLINE_S, MAX_ROUND_DEADLINE_S)),
)
def test_the_plan_document_round_trips_and_names_only_the_deadlines_it_uses(blocks, seconds):
    named = {k: v for k, v in (("deadline_blocks", blocks), ("round_deadline_s", seconds)) if v}
    plan = TrainingPlan(**named)
    document = plan.to_document()
    assert TrainingPlan.model_validate(document) == plan
    if not named:  # neither named: the deadline every older genesis had
        assert document["deadline_blocks"] == 20 and "round_deadline_s" not in document
    else:
        assert {k: document.get(k) for k in named} == named
        assert set(document) & {"deadline_blocks", "round_deadline_s"} == set(named)


@given(st.integers(-(2**60), 2**60) | st.booleans() | st.text(max_size=3) | st.none())
def test_deadline_time_is_a_positive_safe_integer_or_absent(value):
    body = {"round": 1, "base_model": "ab" * 32, "deadline_height": 0, "deadline_time": value}
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 2**53 - 1
    if ok:
        validate_body(TxKind.OPEN_ROUND, body)
    else:
        with pytest.raises(EncodingError):
            validate_body(TxKind.OPEN_ROUND, body)


def test_round_deadline_bounds():
    with pytest.raises(ValueError):
        TrainingPlan(round_deadline_s=MIN_ROUND_DEADLINE_S - 1)
    with pytest.raises(ValueError):
        TrainingPlan(round_deadline_s=MAX_ROUND_DEADLINE_S + 1)  # past one block time step


def test_prevote_refuses_a_proposal_dated_far_behind_the_clock_unless_the_step_forces_it(
    tmp_path,
):
    c = _consortium(tmp_path)
    parent = c.state.head_time
    now = parent + 3_600_000  # the chain sat idle an hour
    stale = _block_at(c, [], parent + 1)  # dated just after the old head
    with pytest.raises(VerificationError) as info:
        check_proposal_time(stale, now, parent_time=parent)
    assert info.value.code == "time_in_past"
    check_proposal_time(stale, now)  # without the parent: the future bound alone (as before)
    check_proposal_time(_block_at(c, [], now - MAX_CLOCK_LAG_MS), now, parent_time=parent)
    # idle for two days: a block can move the time one day at most, and that is accepted
    far = parent + 2 * MAX_BLOCK_TIME_STEP_MS
    check_proposal_time(_block_at(c, [], far), far, parent_time=parent)


def test_a_timed_round_opens_only_once_the_chain_has_caught_up_with_the_clock(tmp_path):
    c = _consortium(tmp_path)
    now = c.state.head_time + 3 * MAX_BLOCK_TIME_STEP_MS  # nodes started three days after init

    def plan(state):
        return plan_block(
            state,
            [],
            height=state.height + 1,
            key=key_for("alice"),
            now_ms=now,
            verdict_of=lambda tx: None,
            aggregate_of=lambda s: None,
        )

    empties = 0
    while not (txs := plan(c.state)):
        empties += 1
        assert empties <= 3
        block = _block_at(c, [], now)
        c.state = c.state.apply(block)
        c.ledger.append(block)
    assert empties == 2  # two catch-up blocks of a day each, then a block at the clock
    assert [str(t.kind) for t in txs] == ["open_round"]
    assert txs[0].body["deadline_time"] == now + DEADLINE_S * 1000
