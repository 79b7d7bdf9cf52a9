"""Block time (docs/PROTOCOL.md §6.2): one proposer cannot date the chain out of existence.

The chain rule (later than the parent, by at most ``MAX_BLOCK_TIME_STEP_MS``, within the safe
integer range) is checked by every replay, verify-chain included; the prevote rule (not past
the validator's clock by more than ``MAX_CLOCK_DRIFT_MS``) by each validator before it votes.
"""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.chain import build_block, commit_with_keys
from bcfl_cli.chain.state import (
    MAX_BLOCK_TIME_STEP_MS,
    MAX_CLOCK_DRIFT_MS,
    check_block_time,
    check_proposal_time,
)
from bcfl_cli.errors import VerificationError
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.encoding import MAX_SAFE_INT
from tests.chain.factories import Consortium, key_for, make_consortium

FOUNDERS = ("alice", "bob", "carol", "dave")


def _with_time(c: Consortium, time_ms: int) -> Block:
    """The next (empty) block dated ``time_ms``, committed by every founder."""
    header = dataclasses.replace(c.next_block([]).header, time=time_ms)
    return commit_with_keys(Block(header, (), None), [key_for(n) for n in FOUNDERS], c.chain)


def _code(call) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(VerificationError) as info:
        call()
    return info.value.code


def test_a_block_dated_at_the_end_of_the_integer_range_is_refused(tmp_path):
    """The attack of issue 16 item 1: every validator signed it; the rules still refuse it."""
    c = make_consortium(tmp_path)
    c.commit([])
    block = _with_time(c, MAX_SAFE_INT)
    assert _code(lambda: c.state.apply(block)) == "time_step_too_large"
    # the step itself is allowed, one millisecond more is not
    parent = c.state.head_time
    assert c.state.apply(_with_time(c, parent + MAX_BLOCK_TIME_STEP_MS)).height == 2
    block = _with_time(c, parent + MAX_BLOCK_TIME_STEP_MS + 1)
    assert _code(lambda: c.state.apply(block)) == "time_step_too_large"


def test_times_outside_the_safe_range_are_a_verdict_not_an_encoding_error(tmp_path):
    c = make_consortium(tmp_path)
    for time_ms in (MAX_SAFE_INT + 1, 2**64, -1):
        assert _code(lambda t=time_ms: check_block_time(c.state, t, 1)) == "time_out_of_range"
    assert _code(lambda: check_block_time(c.state, c.state.head_time, 1)) == ("time_not_increasing")
    check_block_time(c.state, c.state.head_time + 1, 1)


def test_the_prevote_rule_bounds_the_time_by_the_local_clock(tmp_path):
    c = make_consortium(tmp_path)
    now = c.state.head_time + 5_000
    check_proposal_time(_with_time(c, now + MAX_CLOCK_DRIFT_MS), now)
    late = _with_time(c, now + MAX_CLOCK_DRIFT_MS + 1)
    assert _code(lambda: check_proposal_time(late, now)) == "time_in_future"
    check_proposal_time(late, now + 1)  # the clock caught up: valid from then on


@pytest.fixture(scope="module")
def founders(tmp_path_factory: pytest.TempPathFactory) -> Consortium:
    return make_consortium(tmp_path_factory.mktemp("time"))


@settings(max_examples=200, deadline=None)
@given(clock_offset=st.integers(-MAX_BLOCK_TIME_STEP_MS, 1000 * MAX_BLOCK_TIME_STEP_MS))
def test_an_honest_proposer_always_builds_a_block_the_rules_accept(founders, clock_offset):
    """Whatever its clock says (behind the head, or after a chain idle for years), the block
    ``build_block`` makes passes both time rules for a validator whose clock agrees."""
    c = founders
    parent = c.state.head_time
    now = parent + clock_offset
    block = build_block(c.state, c.ledger.head(), [], key_for("alice"), time_ms=now)
    check_block_time(c.state, block.header.time, block.height)
    check_proposal_time(block, max(now, parent))
    assert block.header.time == min(max(now, parent + 1), parent + MAX_BLOCK_TIME_STEP_MS)
