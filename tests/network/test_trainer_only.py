"""A member that trains but does not validate fetches each round's model, not every update
(issue 19: bytes per member), in real ``bcfl node`` processes.

alice, bob and carol validate and train; eve only trains. Two rounds close with all four
updates. Then eve's store holds every aggregate model (checked against its committed hash and
size) and its own updates, and none of the others' updates of round 2 (in round 1 a trainer may
push to a peer before it knows who that peer is); every validator holds them all.
eve's ``/v1/status`` names the rounds it took on the validators' certificate, and its blob
traffic is below a validator's. ``verify-chain --deep`` on eve's home names those rounds as
not recomputed (``--models-only``) and fails without the flag, naming them in its hint.
Restarted with ``--verify-updates``, eve fetches the others' updates of the next round too.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bcfl_cli.demo.launcher import LocalConsortium, MemberPlan
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.blobs import BlobStore
from tests.network.cluster import DIGITS_4, GENESIS_TIME_MS, PASSPHRASE, network_plan

pytestmark = [pytest.mark.network, pytest.mark.timeout(400)]

VALIDATORS = ["alice", "bob", "carol"]


def _blocks(c: LocalConsortium, name: str) -> list[Block]:
    found: list[Block] = []
    while True:
        page = c.blocks(name, len(found), 100)
        found += [Block.from_dict(b) for b in page]
        if len(page) < 100:
            return found


def test_a_trainer_only_member_fetches_the_models_not_the_updates(tmp_path: Path) -> None:
    plan = [
        MemberPlan(name, data=DIGITS_4 / f"member-{i + 1:02d}.csv")
        for i, name in enumerate(VALIDATORS)
    ]
    plan.append(MemberPlan("eve", roles=("trainer",), power=0, data=DIGITS_4 / "member-04.csv"))
    with LocalConsortium(
        tmp_path / "c",
        plan,
        network_plan(rounds=20, min_updates=4, deadline_blocks=200, members=4),
        passphrase=PASSPHRASE,
        genesis_time_ms=GENESIS_TIME_MS,
    ) as c:
        c.start_all(timeout=120)
        c.wait_round_closed(2, timeout=240)
        eve = c.status("eve")
        assert eve["me"]["role"] == "member"
        assert {1, 2} <= set(eve["unverified_rounds"])
        assert c.status("alice")["unverified_rounds"] == []

        # what the chain names, from eve's own blocks
        blocks = _blocks(c, "eve")
        models: dict[str, int] = {}
        updates: dict[str, tuple[str, int]] = {}  # blob -> (author, round)
        eve_did = c.members["eve"].did
        for block in blocks:
            for tx in block.txs:
                if tx.kind is TxKind.AGGREGATE and tx.body["round"] <= 2:
                    models[tx.body["model"]] = tx.body["model_size"]
                elif tx.kind is TxKind.UPDATE and tx.body["round"] <= 2:
                    updates[tx.body["blob"]] = (tx.author, tx.body["round"])
        assert len(models) >= 2 and len(updates) >= 8
        held = BlobStore(c.members["eve"].home.blob_dir)
        for model, size in models.items():
            assert held.verify(model) and held.size(model) == size
        # round 2's: in round 1 a trainer may push before it has learnt who its peers are
        # (a peer not known yet gets the update, in case it validates)
        others = [b for b, (who, number) in updates.items() if who != eve_did and number == 2]
        assert others and not any(held.has(b) for b in others), "eve holds others' updates"
        assert all(held.has(b) for b, (who, _) in updates.items() if who == eve_did)
        alice = BlobStore(c.members["alice"].home.blob_dir)
        assert all(alice.has(b) for b in updates)

        # bytes per member: eve moved less than a validator in the rounds both saw
        traffic = {name: c.status(name)["traffic"] for name in ["eve", *VALIDATORS]}
        print("blob traffic:", json.dumps(traffic))
        assert traffic["eve"]["received"] < min(traffic[v]["received"] for v in VALIDATORS)
        assert traffic["eve"]["sent"] > 0 and traffic["eve"]["received"] > 0

        c.stop("eve")
        home = str(c.members["eve"].home.root)
        plain = c.run_cli("verify-chain", "--home", home, "--deep", "--json", timeout=180)
        assert plain.returncode != 0
        assert "--models-only" in plain.stdout + plain.stderr
        partial = c.run_cli(
            "verify-chain", "--home", home, "--deep", "--models-only", "--json", timeout=180
        )
        assert partial.returncode == 0, partial.stdout + partial.stderr
        report = json.loads(partial.stdout)
        assert {1, 2} <= set(report["unverified_rounds"])

        # --verify-updates: eve fetches every update again and recomputes what it imports
        c.start("eve", extra=["--verify-updates"])
        c.wait_ready("eve", timeout=120)
        after = c.status("eve")["round"]["number"] + 1
        c.wait_round_closed(after, ["eve"], timeout=240)
        assert c.status("eve")["unverified_rounds"] == []
        fresh = [
            tx.body["blob"]
            for block in _blocks(c, "eve")
            for tx in block.txs
            if tx.kind is TxKind.UPDATE and tx.body["round"] == after and tx.author != eve_did
        ]
        assert fresh and all(held.has(b) for b in fresh)
