"""Crash faults: kill -9 and restart random validators, pause one, and nothing committed changes.

Four validators train and commit (quorum 3 of 4, so one node may be down at a time). For a
bounded time a seeded random node is SIGKILLed every few seconds and restarted; one node is
also paused (SIGSTOP) for a few seconds and resumed. Throughout, ``ChainWatch`` compares every
block any node serves with what was seen before (no committed block lost or changed), and a
restarted node must come back at least as high as it was seen before the kill (fsync'd
commits). After the last fault all nodes must agree within 20 s; then every store is compared
block by block and ``verify-chain --deep`` passes on all four.

The CI version injects 3 kills and a pause; the ``slow`` one runs 3 minutes (20+ kills).

Cut off and heal: each node is reached through a proxy (``netcut.py``) that can blackhole
every connection to and from one node while it keeps running; the other three must keep
committing, the cut node must commit nothing it did not see, and once healed it must catch up
to the same head within 20 s; then the stores are compared and verified as above.
"""

from __future__ import annotations

import random
import time

import pytest

from bcfl_cli.demo.launcher import LocalConsortium
from tests.faults.helpers import (
    ChainWatch,
    MakeConsortium,
    converged,
    members,
    plan,
    save_figures,
    verify_all,
    wait_until,
)
from tests.faults.netcut import NetCut

pytestmark = [pytest.mark.network]

NAMES = ["alice", "bob", "carol", "dave"]
RECOVERY_BOUND_S = 20.0


def _crash_run(
    consortium: MakeConsortium, *, fault_s: float, every_s: float, seed: int, min_kills: int
) -> None:
    c = consortium(members(NAMES), plan(min_updates=3, deadline_blocks=15))
    c.start_all(timeout=120)
    watch = ChainWatch(c)
    rng = random.Random(seed)
    wait_until(lambda: c.heights()["alice"] >= 2, 90, "the first blocks")
    watch.observe()
    start_height = watch.height
    kills = pauses = 0
    restarts_s: list[float] = []
    began = time.monotonic()
    paused_once = False
    while time.monotonic() - began < fault_s or kills < min_kills:
        assert kills < 10 * min_kills + 100, "fault loop ran away"
        victim = rng.choice(NAMES)
        others = [n for n in NAMES if n != victim]
        # one fault at a time: the last victim has caught up before the next fault
        top = max(c.heights().values())
        wait_until(lambda: converged(c, NAMES, top), 60, "all four caught up", c)
        watch.observe()
        if not paused_once and time.monotonic() - began > fault_s / 2:
            # a hung machine: holds its sockets, answers nothing; the others go on without it
            before = max(c.heights(others).values())
            c.pause(victim)
            pauses += 1
            wait_until(
                lambda: min(c.heights(others).values()) >= before + 2, 60, "3 of 4 commit", c
            )
            c.resume(victim)
            paused_once = True
        else:
            seen_before = watch.seen.get(victim, 0)
            before = max(c.heights(others).values())
            c.kill(victim)
            kills += 1
            t0 = time.monotonic()
            c.start(victim)  # restarts at once; the other three commit while it boots
            wait_until(
                lambda: min(c.heights(others).values()) >= before + 1, 60, "3 of 4 commit", c
            )
            watch.observe(others)
            status = c.wait_ready(victim, timeout=90)
            restarts_s.append(time.monotonic() - t0)
            assert status["height"] >= seen_before, f"{victim} lost committed blocks"
            watch.forget(victim)
        watch.observe()
        time.sleep(rng.uniform(0.5 * every_s, every_s))
    last_fault = time.monotonic()
    target = max(c.heights().values())
    recovery_s = wait_until(lambda: converged(c, NAMES, target), RECOVERY_BOUND_S, "all agree", c)
    watch.observe()
    committed = watch.height - start_height
    assert committed >= 3 * kills // 2, f"only {committed} blocks committed under faults"
    rounds_closed = c.status("alice")["round"]["number"] - 1
    compared = _stop_and_verify(c, watch)
    save_figures(
        f"crash_faults_{int(fault_s)}s",
        {
            "fault_window_s": round(last_fault - began, 1),
            "kills": kills,
            "pauses": pauses,
            "blocks_committed_during_faults": committed,
            "rounds_closed": rounds_closed,
            "blocks_lost": 0,
            "blocks_changed": 0,
            "block_sightings_compared": watch.sightings,
            "stored_blocks_compared": compared,
            "recovery_s": round(recovery_s, 2),
            "restart_to_ready_s_max": round(max(restarts_s, default=0.0), 1),
            "final_height": watch.height,
        },
    )


def _stop_and_verify(c: LocalConsortium, watch: ChainWatch) -> int:
    """Stop every node cleanly, compare every store block by block, deep-verify every home."""
    for name in NAMES:
        assert c.status(name)["alarm"] is None
        assert c.stop(name) == 0, c.log(name)
    compared = watch.check_stores()
    reports = verify_all(c)
    assert all(r["ok"] and r["deep"] for r in reports.values()), reports
    return compared


@pytest.mark.timeout(300)
def test_kill9_and_pause_short(consortium: MakeConsortium) -> None:
    _crash_run(consortium, fault_s=10.0, every_s=1.0, seed=7, min_kills=3)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_kill9_and_pause_long(consortium: MakeConsortium) -> None:
    _crash_run(consortium, fault_s=180.0, every_s=3.0, seed=11, min_kills=20)


@pytest.mark.timeout(300)
def test_cut_off_and_heal(consortium: MakeConsortium) -> None:
    c = consortium(members(NAMES), plan(min_updates=3, deadline_blocks=15))
    net = NetCut({n: c.members[n].port for n in NAMES}, {n: c.members[n].did for n in NAMES})
    try:
        for name in NAMES:
            peers = [net.url(other) for other in NAMES if other != name]
            c.start(name, peers=peers, extra=["--advertise", net.url(name)])
        for name in NAMES:
            c.wait_ready(name, timeout=120)
        watch = ChainWatch(c)
        wait_until(lambda: c.heights()["alice"] >= 2, 90, "the first blocks", c)
        watch.observe()
        start_height = watch.height
        cuts = []
        for victim, cut_s in (("dave", 8.0), ("bob", 15.0)):
            others = [n for n in NAMES if n != victim]
            top = max(c.heights().values())
            wait_until(lambda: converged(c, NAMES, top), 60, "all four caught up", c)
            before = c.heights()
            net.cut_off(victim)
            began = time.monotonic()
            # the three others keep committing without it (quorum 3 of 4)
            wait_until(
                lambda: min(c.heights(others).values()) >= max(before.values()) + 3,
                60,
                "3 of 4 commit while one is cut off",
                c,
            )
            time.sleep(max(0.0, cut_s - (time.monotonic() - began)))
            watch.observe()
            cut_height = c.heights([victim])[victim]
            # cut off, it can finish at most the height it had in flight
            assert cut_height <= before[victim] + 1, (victim, before, cut_height)
            committed = max(c.heights(others).values()) - max(before.values())
            net.heal(victim)
            healed = time.monotonic()
            target = max(c.heights(others).values())
            recovery_s = wait_until(
                lambda: converged(c, NAMES, target), RECOVERY_BOUND_S, "the healed node", c
            )
            watch.observe()
            cuts.append(
                {
                    "node": victim,
                    "cut_s": round(healed - began, 1),
                    "blocks_committed_by_the_others": committed,
                    "its_height_at_the_cut": before[victim],
                    "its_height_when_healed": cut_height,
                    "recovery_s": round(recovery_s, 2),
                }
            )
        compared = _stop_and_verify(c, watch)
        save_figures(
            "cut_off_and_heal",
            {
                "cuts": cuts,
                "blocks_committed": watch.height - start_height,
                "blocks_lost": 0,
                "blocks_changed": 0,
                "block_sightings_compared": watch.sightings,
                "stored_blocks_compared": compared,
                "bytes_dropped_by_the_cuts": net.dropped_bytes,
            },
        )
    finally:
        net.close()
