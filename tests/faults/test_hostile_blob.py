"""One member's hostile update neither crashes nor stalls the consortium (issue 16, item 2).

Four real node processes, every one a validator and a trainer; three train honestly, the
fourth (mallory) submits a 5 KB update whose safetensors header is 5,000 nested ``[``. Before
the fix, checking it raised ``RecursionError`` out of every validator's round preparation: the
honest updates never got a verdict, the round never closed, and ``verify-chain --deep`` crashed.

``min_updates`` is 4, so the round can only close once *every* trainer's update has a verdict
(or at its deadline): mallory's rejection itself must be on chain. Then every home verifies with
``bcfl verify-chain --deep`` (the CLI, in its own process): exit 0, no traceback.
"""

from __future__ import annotations

import struct
from typing import Any

import pytest

from bcfl_cli.client.blobs import upload_blob
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.demo.launcher import LocalConsortium
from bcfl_cli.protocol.tx import TxKind, make_tx
from bcfl_cli.store.blobs import BlobStore
from tests.faults.helpers import MakeConsortium, members, plan, save_figures, wait_until

pytestmark = [pytest.mark.network, pytest.mark.timeout(900)]

NESTED = struct.pack("<Q", 5000) + b"[" * 5000
HONEST = ["alice", "bob", "carol"]


def _submit_nested(c: LocalConsortium, scratch: Any) -> str:
    """Mallory's update to round 1 through its own node, as soon as the round is open."""
    mallory = c.members["mallory"]

    def round_open() -> bool:
        status = c.try_status("mallory")
        return bool(status and status["round"]["state"] == "open")

    wait_until(round_open, 300, "round 1 open on mallory's node", c, poll=0.1)
    rnd = c.status("mallory")["round"]
    assert rnd["number"] == 1, rnd
    store = BlobStore(scratch)
    digest = store.put(NESTED)
    key = mallory.identity.signing_key
    tx = make_tx(
        key,
        c.genesis_hash,
        TxKind.UPDATE,
        {
            "round": 1,
            "base_model": rnd["base_model"],
            "blob": digest,
            "blob_size": len(NESTED),
            "num_samples": 10,
            "metrics": {},
        },
    )
    with SignedClient(key, mallory.url + "/v1") as client:
        upload_blob(client, digest, store)
        client.post("/txs", json_body={"tx": tx.to_dict()})
    return tx.hash


def _round_one(c: LocalConsortium) -> dict[str, Any]:
    """Round 1's validations and aggregate, read from alice's node."""
    validations: dict[str, dict[str, Any]] = {}
    authors: dict[str, str] = {}
    aggregate: dict[str, Any] | None = None
    start = 1
    while blocks := c.blocks("alice", start, 100):
        for raw in blocks:
            for item in raw["txs"]:
                tx = item["tx"]
                if tx["kind"] == "update" and tx["body"]["round"] == 1:
                    authors[tx["author"]] = tx["body"]["blob"]
                if tx["kind"] == "validation":
                    validations[tx["body"]["update"]] = tx["body"]
                if tx["kind"] == "aggregate" and tx["body"]["round"] == 1:
                    aggregate = tx["body"]
        start = blocks[-1]["header"]["height"] + 1
    assert aggregate is not None, "round 1 has no aggregate"
    return {"validations": validations, "aggregate": aggregate, "authors": authors}


def test_a_nested_header_update_is_rejected_and_the_round_closes(
    consortium: MakeConsortium, tmp_path: Any
) -> None:
    founders = members([*HONEST, "mallory"])
    c = consortium(founders, plan(validators=4, min_updates=4, deadline_blocks=40, rounds=2))
    for name in HONEST:
        c.start(name)
    c.start("mallory", train=False)
    for name in c.names:
        c.wait_ready(name, timeout=300)
    bad = _submit_nested(c, tmp_path / "scratch")
    c.wait_round_closed(1, timeout=300)
    seen = _round_one(c)
    verdict = seen["validations"].get(bad)
    assert verdict is not None, "mallory's update got no verdict on chain"
    assert (verdict["verdict"], verdict["reason"]) == ("reject", "malformed_blob"), verdict
    aggregate = seen["aggregate"]
    assert len(aggregate["updates"]) == 3 and bad not in aggregate["updates"], aggregate
    accepted = [v for v in seen["validations"].values() if v["verdict"] == "accept"]
    assert len(accepted) == 3, seen["validations"]
    for name in c.names:
        assert c.members[name].running, c.log(name)
        assert c.status(name)["alarm"] is None
    for name in c.names:
        assert c.stop(name) == 0, c.log(name)
    reports = {}
    for name in c.names:
        home = str(c.members[name].home.root)
        result = c.run_cli("verify-chain", "--deep", "--json", "--home", home, timeout=600)
        assert result.returncode == 0, (name, result.stdout[-2000:], result.stderr[-2000:])
        assert "Traceback" not in result.stderr, result.stderr
        reports[name] = result.stdout
    save_figures(
        "hostile_blob",
        {"verdict": verdict, "aggregate_updates": len(aggregate["updates"]), "homes": len(reports)},
    )
