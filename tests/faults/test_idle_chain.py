"""An idle chain makes no blocks (issue 20), on a real node process.

One single-validator node (quorum 1 of 1), no trainer submitting, default block pace (no
``--empty-blocks``):

* a plan with a deadline in seconds: after the block that opens round 1, no block at all while
  nothing happens; the deadline wakes the proposer, the round closes in the first block whose
  time has reached it (with no update, keeping the base model) and the next one opens in that
  block; once the plan's last round is closed the plan is finished (status and log say so once)
  and the chain stays where it is;
* a plan with a deadline in blocks only (an older genesis): heartbeats, at most one every
  ``--heartbeat-interval`` s, carry the round to its deadline height; after the plan is
  finished, no heartbeat either.

Before this, the node proposed an empty block every ``--empty-block-interval`` (1 s by
default), forever: 330+ blocks after a 10-round plan had ended (issue 20).
"""

from __future__ import annotations

import json
import time

import pytest

from bcfl_cli.protocol.block import Block
from tests.faults.helpers import MakeConsortium, diagnose, members, plan, verify_all, wait_until

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

#: How long the chain is watched for blocks it should not make (the old pace: one per 0.3 s).
IDLE_S = 4.0


def _finished_logs(log: str) -> int:
    count = 0
    for line in log.splitlines():
        try:
            count += json.loads(line).get("msg") == "training plan finished"
        except ValueError:
            continue
    return count


def _stays_at(c, height: int, deadline_ms: int | None = None) -> None:  # type: ignore[no-untyped-def]
    """No block above ``height`` for IDLE_S. With a round deadline (block time, ms) in force,
    a block dated at or past it is the deadline's own (the test checks its content next): only
    a block dated before it is an idle one. So a slow machine, where the window runs past the
    deadline, does not fail the test, and the old pace (blocks every 0.3 s) still does."""
    time.sleep(IDLE_S)
    now = c.status("alice")["height"]
    if deadline_ms is None or now == height:
        assert now == height, f"idle chain grew from {height} to {now}\n{diagnose(c)}"
        return
    grown = [Block.from_dict(b) for b in c.blocks("alice", height + 1, now - height)]
    early = [(b.height, b.header.time) for b in grown if b.header.time < deadline_ms]
    assert not early, f"idle blocks before the deadline {deadline_ms}: {early}\n{diagnose(c)}"


def test_no_empty_blocks_while_idle_and_a_deadline_in_time_wakes_the_proposer(
    consortium: MakeConsortium,
) -> None:
    genesis = plan(validators=1, min_updates=1, rounds=2, deadline_blocks=None, round_deadline_s=10)
    # a genesis of now: one of a year ago would first catch the chain up with the clock
    now = int(time.time() * 1000)
    c = consortium(members(["alice"]), genesis, empty_blocks=False, genesis_time_ms=now)
    c.start("alice", train=False)
    c.wait_ready("alice", timeout=120)
    wait_until(lambda: c.status("alice")["round"]["number"] == 1, 60, "round 1 open", c)
    opened = c.status("alice")
    assert opened["height"] == 1 and opened["round"]["deadline_height"] == 0
    deadline_1 = opened["round"]["deadline_time"]
    assert deadline_1 == Block.from_dict(c.blocks("alice", 1, 1)[0]).header.time + 10_000
    _stays_at(c, 1, deadline_1)  # nothing to do: no block (the old pace made ~13 here)

    # the deadline wakes the proposer: round 1 closes (no update: the base model) in block 2,
    # whose time has reached the deadline, and round 2 opens in the same block
    wait_until(lambda: c.status("alice")["height"] >= 2, 60, "round 1's deadline block", c)
    closing = Block.from_dict(c.blocks("alice", 2, 1)[0])
    assert [str(t.kind) for t in closing.txs] == ["aggregate", "open_round"]
    assert closing.header.time >= deadline_1
    assert c.status("alice")["plan"]["finished"] is False

    wait_until(lambda: c.status("alice")["plan"]["finished"], 60, "the plan finished", c)
    status = c.status("alice")
    assert status["height"] == 3
    assert (status["round"]["number"], status["round"]["state"]) == (2, "closed")
    assert status["plan"]["finished_height"] == 3
    _stays_at(c, 3)  # finished: no block at all until a transaction arrives
    assert c.stop("alice") == 0, c.log("alice")
    assert _finished_logs(c.log("alice", 200_000)) == 1
    reports = verify_all(c)
    assert all(r["ok"] for r in reports.values()), reports


def test_heartbeats_carry_a_deadline_in_blocks_and_stop_with_the_plan(
    consortium: MakeConsortium,
) -> None:
    genesis = plan(validators=1, min_updates=1, rounds=1, deadline_blocks=4)
    c = consortium(members(["alice"]), genesis, empty_blocks=False, heartbeat_interval=1.0)
    c.start("alice", train=False)
    c.wait_ready("alice", timeout=120)
    wait_until(lambda: c.status("alice")["plan"]["finished"], 90, "the plan finished", c)
    status = c.status("alice")
    # round 1 opened in block 1 with deadline height 5: blocks 2-4 are empty heartbeats, about
    # a second apart (not the 0.3 s empty-block interval), and block 5 closes the round
    assert status["height"] == 5 and status["plan"]["finished_height"] == 5, status
    blocks = [Block.from_dict(b) for b in c.blocks("alice", 1, 5)]
    assert [len(b.txs) for b in blocks[1:4]] == [0, 0, 0]
    gaps = [b.header.time - a.header.time for a, b in zip(blocks, blocks[1:4], strict=False)]
    assert min(gaps) >= 900, gaps
    _stays_at(c, 5)  # no heartbeat once the plan is finished
    assert c.stop("alice") == 0, c.log("alice")
