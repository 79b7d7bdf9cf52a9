"""What a simulated proposer puts in its block, from the chain state and its mempool.

The round's life cycle as the chain rules allow it (PROTOCOL.md §6.3), packed so that a round
takes two heights when every update is in: ``open_round``; then every pending update followed by
this proposer's ``validation`` (the contract's verdict, from ``fl/checks.py``), the
``aggregate`` once the round may close, and the next ``open_round``. Evidence of equivocation
goes first. The block is trial-applied with the real rules by the caller; this module only
chooses. It depends on chain, fl and protocol, never on the node.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

import nacl.signing

from bcfl_cli.chain.builder import build_block, next_block_time
from bcfl_cli.chain.state import ChainState, round_deadlines
from bcfl_cli.errors import VerificationError
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.fl.stored_aggregate import BlobFiles
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.training.rounds import compute_aggregate, pending_updates

#: Transactions in one simulated block (the protocol allows 2,000).
MAX_BLOCK_TXS = 1_000


def nonce(rng: random.Random) -> str:
    """A transaction nonce from the run's seed (``make_tx`` draws a random one otherwise)."""
    return f"{rng.getrandbits(128):032x}"


def open_round(
    state: ChainState,
    model: str,
    *,
    height: int,
    time_ms: int,
    key: nacl.signing.SigningKey,
    rng: random.Random,
) -> list[Transaction]:
    """The next round's ``open_round`` on ``model``, if the plan has rounds left."""
    if state.round.number >= state.config.training.rounds:
        return []
    deadline_height, deadline_time = round_deadlines(state.config.training, height, time_ms)
    body: dict[str, Any] = {
        "round": state.round.number + 1,
        "base_model": model,
        "deadline_height": deadline_height,
    }
    if deadline_time is not None:
        body["deadline_time"] = deadline_time
    return [
        make_tx(key, state.chain_id, TxKind.OPEN_ROUND, body, time_ms=time_ms, nonce=nonce(rng))
    ]


def plan_block(
    state: ChainState,
    head: Block,
    pending: Sequence[Transaction],
    *,
    height: int,
    now_ms: int,
    key: nacl.signing.SigningKey,
    checks: FLChecks,
    blobs: BlobFiles,
    rng: random.Random,
) -> list[Transaction]:
    """The transactions of the block at ``height`` proposed at ``now_ms`` on ``state``."""
    chain = state.chain_id
    time_ms = next_block_time(state.head_time, now_ms)
    txs: list[Transaction] = []
    offences = set(state.offences)
    for tx in pending:
        if tx.kind is TxKind.MISBEHAVIOUR:
            first = tx.body["votes"][0]
            offence = (tx.body["offender"], first["height"], first["round"], str(first["type"]))
            if offence not in offences:
                offences.add(offence)
                txs.append(tx)
    rnd = state.round
    if not rnd.open:
        return txs + open_round(state, rnd.model, height=height, time_ms=time_ms, key=key, rng=rng)
    after: ChainState | None = state
    for update in pending_updates(state, pending):
        if len(txs) + 4 > MAX_BLOCK_TXS:
            break
        verdict = checks.check_update(state, update)
        body = {
            "update": update.hash,
            "verdict": "accept" if verdict.accept else "reject",
            "reason": verdict.reason,
            "detail": verdict.detail,
        }
        validation = make_tx(key, chain, TxKind.VALIDATION, body, time_ms=time_ms, nonce=nonce(rng))
        txs += [update, validation]
    if len(txs) > 0 and txs[-1].kind is TxKind.VALIDATION:
        after = _trial(state, head, txs, time_ms, key)
    if after is not None and after.round_may_close(height, time_ms):
        model, size = compute_aggregate(after, blobs)
        aggregate_body: dict[str, Any] = {
            "round": after.round.number,
            "updates": after.round.accepted_hashes,
            "rule": after.config.aggregation_rule,
            "params": after.config.aggregation_params,
            "model": model,
            "model_size": size,
        }
        txs.append(
            make_tx(key, chain, TxKind.AGGREGATE, aggregate_body, time_ms=time_ms, nonce=nonce(rng))
        )
        closed = _trial(state, head, txs, time_ms, key)
        if closed is not None:
            txs += open_round(closed, model, height=height, time_ms=time_ms, key=key, rng=rng)
    return txs


def _trial(
    state: ChainState,
    head: Block,
    txs: Sequence[Transaction],
    time_ms: int,
    key: nacl.signing.SigningKey,
) -> ChainState | None:
    """The state after ``txs`` in the next block (the rules without the app checks, which the
    caller's full check of the whole block repeats); None if a rule refuses them."""
    try:
        block = build_block(state, head, txs, key, time_ms=time_ms)
        return state.apply(block, verify_signatures=False, proposal=True)
    except VerificationError:
        return None
