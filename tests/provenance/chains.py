"""Chains for model-proof tests: two rounds, a validator admitted and one removed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bcfl_cli.protocol.tx import Transaction, TxKind
from tests.chain.factories import Consortium, did_for, make_consortium, update_body, validation


def _update(c: Consortium, name: str, rnd: int, payload: bytes, *, accuracy: str) -> Transaction:
    body = update_body(c, rnd, payload)
    body["metrics"] = {"eval_accuracy": accuracy, "dp_epsilon": "1.25", "loss": "0.5"}
    return c.tx(name, TxKind.UPDATE, body)


def _round(c: Consortium, rnd: int, proposer: str, trainers: list[str]) -> bytes:
    """open_round, one update per trainer (the last rejected), the aggregate: 3 blocks."""
    c.commit(
        [
            c.tx(
                proposer,
                TxKind.OPEN_ROUND,
                {
                    "round": rnd,
                    "base_model": c.state.round.model,
                    "deadline_height": c.state.height + 1 + 5,
                },
            )
        ],
        proposer=proposer,
    )
    txs: list[Transaction] = []
    accepted = []
    for i, name in enumerate(trainers):
        update = _update(c, name, rnd, f"r{rnd}-{name}".encode() * 40, accuracy=f"0.{80 + i}")
        verdict = "reject" if i == len(trainers) - 1 else "accept"
        txs += [update, validation(c, update, verdict, proposer=proposer)]
        if verdict == "accept":
            accepted.append(update.hash)
    c.commit(txs, proposer=proposer)
    model = f"aggregate-{rnd}".encode() * 50
    c.commit(
        [
            c.tx(
                proposer,
                TxKind.AGGREGATE,
                {
                    "round": rnd,
                    "updates": sorted(accepted),
                    "rule": "fedavg",
                    "params": c.state.config.aggregation_params,
                    "model": c.blob(model),
                    "model_size": len(model),
                },
            )
        ],
        proposer=proposer,
    )
    return model


def two_round_chain(root: Path, **options: Any) -> Consortium:
    """Heights: 1 erin asks to join as a validator, 2 two approvals (erin votes from 3 on),
    3-5 round 1, 6 dave's removal (alice, bob; dave votes no more from 7), 7-9 round 2."""
    c = make_consortium(root, **options)
    join = c.tx(
        "erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer", "validator"], "power": 1}
    )
    c.commit([join])
    c.commit(
        [
            c.tx(name, TxKind.APPROVE_MEMBER, {"member": did_for("erin"), "request": join.hash})
            for name in ("alice", "bob")
        ],
        proposer="bob",
    )
    _round(c, 1, "alice", ["bob", "erin", "carol"])
    c.commit(
        [
            c.tx(name, TxKind.REMOVE_MEMBER, {"member": did_for("dave"), "reason": "left"})
            for name in ("alice", "bob")
        ],
        proposer="carol",
    )
    _round(c, 2, "erin", ["alice", "erin", "bob"])
    return c
