"""A fifth member joins four running nodes while rounds run, is approved, and takes part.

``bcfl join`` pins the genesis from alice's node and sends the signed join request; two
validators approve with ``bcfl members approve`` (admission_approvals = 2); erin then starts
her node from the genesis-only store, catches up, and (a validator now, 4 of 5 is the quorum)
keeps the chain going with the others while a round closes with her update in it.

min_updates = 5: the four founders' rounds close at their deadline (8 blocks); once erin
trains too, a round closes as soon as all five updates are in.
"""

from __future__ import annotations

import httpx
import pytest

from bcfl_cli.protocol.tx import Transaction
from tests.network.cluster import DIGITS_4, wait_for
from tests.network.conftest import MakeCluster

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]


def test_fifth_member_joins_while_rounds_run(cluster: MakeCluster) -> None:
    c = cluster(config={"rounds": 100, "min_updates": 5, "deadline_blocks": 8})
    c.start_all()
    c.wait_round_closed(1, timeout=120)
    erin = c.add_member("erin")
    erin.data = DIGITS_4 / "member-01.csv"
    alice = c.members["alice"]
    joined = c.run_cli(
        "join",
        alice.url,
        "--home",
        str(erin.home.root),
        "--genesis-hash",
        c.genesis_hash,
        "--name",
        "erin",
        "--roles",
        "trainer,validator",
        "--power",
        "1",
        "--yes",
    )
    assert joined.returncode == 0, joined.stdout + joined.stderr
    for name in ("bob", "carol"):
        approved = c.run_cli(
            "members",
            "approve",
            erin.did,
            "--home",
            str(c.members[name].home.root),
            "--node",
            c.members[name].url,
            "--timeout",
            "60",
        )
        assert approved.returncode == 0, approved.stdout + approved.stderr
    wait_for(
        lambda: any(m["did"] == erin.did for m in c.status("alice")["members"]),
        60,
        "erin admitted",
    )
    c.names.append("erin")
    c.start("erin")
    c.wait_ready("erin")
    c.wait_height(c.status("alice")["height"], ["erin"], timeout=90)
    assert c.status("erin")["me"]["role"] == "validator"
    number = c.status("erin")["round"]["number"]
    c.wait_round_closed(number + 2, timeout=150)
    # erin's own update was accepted into an aggregate
    url = c.members["erin"].url + "/v1/blocks"
    mine, aggregated = set(), set()
    for start in range(0, c.status("erin")["height"] + 1, 100):
        for block in httpx.get(url, params={"start": start, "limit": 100}, timeout=10).json()[
            "blocks"
        ]:
            for t in block["txs"]:
                tx = t["tx"]
                if tx["kind"] == "update" and tx["author"] == erin.did:
                    mine.add(Transaction.from_dict(t).hash)
                if tx["kind"] == "aggregate":
                    aggregated |= set(tx["body"]["updates"])
    assert mine & aggregated, "erin's update is in no aggregate"
    top = min(c.heights().values())
    c.wait_height(top + 2, timeout=60)  # 4 of 5 validators sign each block now
    assert all(c.status(n)["alarm"] is None for n in c.names)
