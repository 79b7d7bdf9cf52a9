"""A stranger floods a running node's ``/v1/join`` (issue 16, item 3), on real processes.

One single-validator node (quorum 1 of 1) whose genesis caps pending join requests at 5. From
one address, fresh keys send join requests as fast as they can: the node admits at most the
documented burst (10 per address, then 1 per s), its pool no more than the chain has room for,
the chain holds exactly the cap, a further request is refused with ``join_requests_full``, the
chain keeps committing throughout, and verify-chain replays the same rule from the genesis.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter
from pathlib import Path

import nacl.signing
import pytest

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.protocol.tx import TxKind, make_tx
from bcfl_cli.wire.refusal import Refusal
from tests.faults.helpers import (
    MakeConsortium,
    members,
    plan,
    save_figures,
    verify_all,
    wait_until,
)

pytestmark = [pytest.mark.network, pytest.mark.lone_node, pytest.mark.timeout(300)]

CAP = 5
BURST = 10


def _stranger(i: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(b"join-spam-stranger:%d" % i).digest())


def _send(url: str, genesis: str, i: int) -> str:
    """One stranger's signed join request; "accepted" or the refusal's code."""
    key = _stranger(i)
    body = {"name": f"stranger-{i}", "roles": ["trainer"], "power": 0}
    tx = make_tx(key, genesis, TxKind.JOIN_REQUEST, body)
    with SignedClient(key, url + "/v1", retries=0) as client:
        try:
            client.post("/join", json_body={"tx": tx.to_dict()})
        except Refusal as exc:
            return str(exc.code)
    return "accepted"


def test_join_flood_is_bounded_and_the_chain_goes_on(
    consortium: MakeConsortium, tmp_path: Path
) -> None:
    genesis = dataclasses.replace(
        plan(validators=1, min_updates=1, deadline_blocks=5), max_pending_joins=CAP
    )
    c = consortium(members(["alice"]), genesis)
    c.start("alice", train=False)
    c.wait_ready("alice", timeout=120)
    url = c.members["alice"].url
    start_height = c.status("alice")["height"]

    start = time.monotonic()
    outcomes = Counter(_send(url, c.genesis_hash, i) for i in range(1, 31))
    elapsed = time.monotonic() - start
    passed_auth = outcomes["accepted"] + outcomes["join_requests_full"]
    assert set(outcomes) <= {"accepted", "join_requests_full", "rate_limited"}, outcomes
    assert passed_auth <= BURST + int(elapsed) + 1, (outcomes, elapsed)
    assert outcomes["rate_limited"] >= 1, outcomes
    assert outcomes["accepted"] <= CAP, outcomes

    def committed() -> bool:
        return len(c.status("alice")["pending_members"]) == min(CAP, outcomes["accepted"])

    wait_until(committed, 60, "the admitted join requests on chain", c)
    # fill what is left of the cap, slowly (within the rate), then one more is refused
    i = 100
    while len(c.status("alice")["pending_members"]) < CAP:
        time.sleep(1.1)
        i += 1
        assert _send(url, c.genesis_hash, i) in ("accepted", "join_requests_full")
        wait_until(lambda: not c.status("alice")["mempool"], 60, "an empty pool", c)
    time.sleep(1.1)
    assert _send(url, c.genesis_hash, 999) == "join_requests_full"
    assert len(c.status("alice")["pending_members"]) == CAP
    # the chain kept committing blocks through the flood
    wait_until(lambda: c.status("alice")["height"] >= start_height + 3, 60, "more blocks", c)
    assert c.status("alice")["alarm"] is None
    assert c.stop("alice") == 0, c.log("alice")
    reports = verify_all(c)
    assert all(r["ok"] for r in reports.values()), reports
    save_figures(
        "join_spam",
        {"outcomes": dict(outcomes), "burst_s": round(elapsed, 2), "cap": CAP},
    )
