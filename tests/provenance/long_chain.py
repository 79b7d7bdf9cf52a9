"""A long chain built fast, for the proof's size and time on 1,000 blocks.

Blocks are committed by every validator as on a live chain, applied without re-checking their
signatures (we just made them) and appended a hundred at a time (one fsync a batch). A round
takes three blocks (open_round; an update and its validation from each trainer; the aggregate)
every ``round_every`` blocks; the blocks between carry nothing, as a live chain's idle heights.
"""

from __future__ import annotations

from pathlib import Path

from bcfl_cli.chain import build_block, commit_with_keys
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import Transaction, TxKind
from tests.chain.factories import (
    Consortium,
    key_for,
    make_consortium,
    update_body,
    validation,
)

BATCH = 100


def long_chain(
    root: Path, *, blocks: int = 1000, round_every: int = 10, validators: int = 4
) -> Consortium:
    """``validators`` members, each a trainer and a validator of power 1, all signing every
    block and sending an update every round."""
    members = tuple((f"v{i}", ["trainer", "validator"], 1) for i in range(validators))
    c = make_consortium(
        root, members, training={"min_updates": 2, "deadline_blocks": 5, "rounds": blocks}
    )
    names = c.names()
    pending: list[Block] = []
    head = c.genesis
    signers = [key_for(name) for name in c.names()]
    rnd = 0
    for height in range(1, blocks + 1):
        step = height % round_every
        txs: list[Transaction] = []
        if step == 1:
            rnd += 1
            txs = [
                c.tx(
                    names[0],
                    TxKind.OPEN_ROUND,
                    {
                        "round": rnd,
                        "base_model": c.state.round.model,
                        "deadline_height": height + 5,
                    },
                )
            ]
        elif step == 2 and c.state.round.open:
            for name in names:
                body = update_body(c, rnd, f"{rnd}-{name}".encode())
                body["metrics"] = {"eval_accuracy": "0.9012", "dp_epsilon": "2.5", "steps": "40"}
                update = c.tx(name, TxKind.UPDATE, body)
                txs += [update, validation(c, update, proposer=names[0])]
        elif step == 3 and c.state.round.open:
            model = f"model-{rnd}".encode() * 20
            txs = [
                c.tx(
                    names[0],
                    TxKind.AGGREGATE,
                    {
                        "round": rnd,
                        "updates": c.state.round.accepted_hashes,
                        "rule": "fedavg",
                        "params": c.state.config.aggregation_params,
                        "model": c.blob(model),
                        "model_size": len(model),
                    },
                )
            ]
        c.clock += 10
        block = build_block(c.state, head, txs, key_for(names[0]), time_ms=c.clock)
        block = commit_with_keys(block, signers, c.chain)
        head = block
        c.state = c.state.apply(block, verify_signatures=False)
        pending.append(block)
        if len(pending) == BATCH:
            c.ledger.append_many(pending)
            pending = []
    c.ledger.append_many(pending)
    return c
