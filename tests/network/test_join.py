"""A fifth member joins four running nodes while rounds run, is approved, and takes part.

``bcfl join`` pins the genesis from alice's node and sends the signed join request; two
validators approve with ``bcfl members approve`` (admission_approvals = 2); erin then starts
her node from the genesis-only store, catches up, and (a validator now, 4 of 5 is the quorum)
keeps the chain going with the others. Rounds go on until every one of the five trainers has
updates in three aggregates (erin's all from rounds after she joined); then all five nodes hold
the same head hash, stop gracefully, and ``bcfl verify-chain --deep`` passes on every home.

min_updates = 5: the four founders' rounds close at their deadline (8 blocks); once erin
trains too, a round closes as soon as all five updates are in.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from bcfl_cli.protocol.tx import Transaction
from tests.network.cluster import DIGITS_4, Cluster, wait_for
from tests.network.conftest import MakeCluster

pytestmark = [pytest.mark.network, pytest.mark.timeout(480)]


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
    # three rounds with updates from every trainer (erin's rounds all come after her admission)
    dids = {c.members[n].did for n in c.names}
    wait_for(
        lambda: all(n >= 3 for n in aggregated_rounds_by_author(c, "erin", dids).values()),
        240,
        "three aggregated updates from every trainer",
        interval=2.0,
    )
    top = min(c.heights().values())
    c.wait_height(top + 2, timeout=60)  # 4 of 5 validators sign each block now
    assert all(c.status(n)["alarm"] is None for n in c.names)

    # the same head everywhere, graceful stops, deep verification of every home
    top = min(c.heights().values())
    c.wait_height(top + 1, timeout=60)
    heads = {n: head_at(c, n, top) for n in c.names}
    assert len(set(heads.values())) == 1, heads
    for name in c.names:
        assert c.stop(name) == 0, c.log(name)
    homes = [str(c.members[name].home.root) for name in c.names]
    verified = c.run_cli_each([("verify-chain", "--deep", "--json", "--home", h) for h in homes])
    for out in verified:
        assert out.returncode == 0, out.stdout + out.stderr


def _blocks(c: Cluster, name: str) -> list[dict[str, Any]]:
    url = c.members[name].url + "/v1/blocks"
    blocks: list[dict[str, Any]] = []
    for start in range(0, c.status(name)["height"] + 1, 100):
        page = httpx.get(url, params={"start": start, "limit": 100}, timeout=10).json()
        blocks += page["blocks"]
    return blocks


def aggregated_rounds_by_author(c: Cluster, name: str, dids: set[str]) -> dict[str, int]:
    """For every trainer, in how many committed aggregates one of its updates was used."""
    author: dict[str, str] = {}
    counts = dict.fromkeys(dids, 0)
    for block in _blocks(c, name):
        for t in block["txs"]:
            tx = t["tx"]
            if tx["kind"] == "update":
                author[Transaction.from_dict(t).hash] = tx["author"]
            elif tx["kind"] == "aggregate":
                for who in {author.get(h) for h in tx["body"]["updates"]}:
                    if who in counts:
                        counts[who] += 1
    return counts


def head_at(c: Cluster, name: str, height: int) -> str:
    """The hash of the block at ``height`` (the ``prev`` of the block above it)."""
    url = c.members[name].url + "/v1/blocks"
    data = httpx.get(url, params={"start": height + 1, "limit": 1}, timeout=5).json()
    return str(data["blocks"][0]["header"]["prev"]) if data["blocks"] else ""
