"""Four real ``bcfl node`` processes on loopback: rounds, a late node, a crash, one node down.

One cluster life, in order (each step is one of the issue's scenarios):

1. alice, bob, carol start; dave (a validator) is down: the other three keep committing and
   close rounds 1 and 2 with their trained updates (min_updates = 3).
2. dave starts from its genesis-only store and catches up by itself (catch-up rate reported).
3. While a round is open, bob is SIGKILLed; alice, carol and dave keep going; bob restarts
   from its store (vote guard restored: no double signing) and catches up.
4. One more round closes with all four up; all four hold the same blocks; all stop gracefully
   (SIGTERM, exit 0); ``bcfl verify-chain --deep`` passes on every home.

The plan has more rounds than the test waits for, so no step races the end of training.
"""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.network.cluster import Cluster, wait_for
from tests.network.conftest import MakeCluster

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]


def block_hash(cluster: Cluster, name: str, height: int) -> str:
    url = cluster.members[name].url + "/v1/blocks"
    data = httpx.get(url, params={"start": height, "limit": 1}, timeout=5).json()
    return str(data["blocks"][0]["header"]["prev"]) if data["blocks"] else ""


def test_four_nodes_rounds_late_joiner_crash_and_one_down(cluster: MakeCluster) -> None:
    c = cluster(config={"rounds": 100, "min_updates": 3, "deadline_blocks": 60})
    three = ["alice", "bob", "carol"]
    started = time.monotonic()
    for name in three:
        c.start(name)
    for name in three:
        c.wait_ready(name)
    ready = time.monotonic()

    # 1. one of four validators down: the other three commit and close two rounds.
    c.wait_round_closed(2, three, timeout=120)
    two_rounds = time.monotonic()
    assert all(c.status(n)["alarm"] is None for n in three)

    # 2. dave starts from zero and catches up.
    target = c.status("alice")["height"]
    catch_start = time.monotonic()
    c.start("dave")
    c.wait_height(target, ["dave"], timeout=90)
    catch_s = time.monotonic() - catch_start

    # 3. SIGKILL bob mid-round; the other three go on; bob restarts and catches up.
    wait_for(lambda: c.status("alice")["round"]["state"] == "open", 60, "an open round")
    c.kill("bob")
    h = c.status("alice")["height"]
    c.wait_height(h + 2, ["alice", "carol", "dave"], timeout=60)
    c.start("bob")
    c.wait_ready("bob")
    c.wait_height(c.status("alice")["height"], ["bob"], timeout=60)

    # 4. one more round closes everywhere; same blocks; graceful stop; deep verification.
    last = c.status("bob")["round"]["number"]
    c.wait_round_closed(last + 1, c.names, timeout=120)
    top = min(c.heights().values())
    c.wait_height(top + 1, timeout=30)
    heads = {n: block_hash(c, n, top + 1) for n in c.names}
    assert len(set(heads.values())) == 1, heads
    assert all(c.status(n)["alarm"] is None for n in c.names)
    kinds = set()
    for start in range(0, top + 1, 100):
        url = c.members["carol"].url + "/v1/blocks"
        blocks = httpx.get(url, params={"start": start, "limit": 100}, timeout=10).json()["blocks"]
        kinds |= {t["tx"]["kind"] for b in blocks for t in b["txs"]}
    assert "misbehaviour" not in kinds  # bob's restart signed nothing twice
    assert {"open_round", "update", "validation", "aggregate"} <= kinds
    for name in c.names:
        assert c.stop(name) == 0, c.log(name)
    # at the default log level a node logs commits and rounds, not every vote (about 1,200
    # lines in 5 minutes before); `--log-level debug` shows them
    node_log = (c.members["alice"].home.node_dir / "node.log").read_text()
    assert '"msg": "committed' in node_log or "committed" in node_log
    assert '"msg": "voted"' not in node_log and " voted " not in node_log
    homes = [str(c.members[name].home.root) for name in c.names]
    verified = c.run_cli_each([("verify-chain", "--deep", "--json", "--home", h) for h in homes])
    for out in verified:
        assert out.returncode == 0, out.stdout + out.stderr
    report = {
        "startup_s": round(ready - started, 1),
        "two_rounds_s": round(two_rounds - ready, 1),
        "catch_up_blocks": target,
        "catch_up_s": round(catch_s, 1),
    }
    print("cluster figures:", json.dumps(report))
