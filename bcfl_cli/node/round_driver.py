"""What a proposer puts in its block: the round life cycle, as a function of the chain state.

Given the state after the head, the pending transactions and what has been *prepared* (contract
verdicts of pending updates, the aggregate of the open round), ``plan_block`` returns the
transactions of the next block:

1. membership and evidence transactions, in arrival order;
2. ``open_round`` when no round is open and the plan has rounds left (base = the latest
   aggregate model, or the genesis initial model; ``deadline_height`` = height + plan's
   blocks, ``deadline_time`` = this block's time + plan's seconds, as the plan names them);
3. while the round collects updates: each prepared update immediately followed by this
   proposer's ``validation`` carrying the contract's verdict; an update whose blob this node
   does not hold (``has_blob``) waits in the mempool for a later block, as the validators fetch
   the blobs of a proposal from its proposer first, and a proposer must be able to serve them;
4. once ``min_updates`` are accepted or a deadline (height or time) is reached: the ``aggregate``
   (no more updates after that point: the aggregate lists exactly the accepted set); in the
   same block as the updates that complete the quorum when it has been prepared for them;
5. right after an ``aggregate``, when the plan has rounds left: the next round's
   ``open_round`` (whose base is that aggregate's model), so one block closes a round and
   opens the next.

The chain rules apply a block's transactions in order (PROTOCOL.md §6.3), so steps 3-5 in one
block pass exactly the checks they pass in three blocks; packing them saves the heights (each a
full consensus instance) between them.

Nothing here blocks: verdicts and aggregates are computed beforehand, off the event loop, by
``prepare_verdicts`` / ``compute_aggregate``; a piece not prepared yet waits for a later block.
``build_proposal`` then trial-applies the block with the real rules and drops any transaction
they refuse, so a proposer never proposes a block its own rules reject.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any

import nacl.signing

from bcfl_cli.chain.builder import build_block, next_block_time
from bcfl_cli.chain.checks import AppChecks, VerdictLike
from bcfl_cli.chain.state import MAX_CLOCK_LAG_MS, AcceptedUpdate, ChainState, round_deadlines
from bcfl_cli.errors import VerificationError
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.training.rounds import pending_updates

log = logging.getLogger("bcfl.node.rounds")

#: Transactions a proposer puts in one block (well under the protocol's 2,000 and 4 MB).
MAX_BLOCK_TXS = 500
#: Signed validations ``plan_block`` keeps for reuse (then it starts over).
MAX_SIGNED_KEPT = 4096

VerdictOf = Callable[[Transaction], VerdictLike | None]
AggregateOf = Callable[[ChainState], tuple[str, int] | None]
HasBlob = Callable[[str], bool]


@dataclass(frozen=True)
class AggregateKey:
    """What an aggregate depends on: the round's base model and its accepted update set."""

    round: int
    base_model: str
    updates: tuple[str, ...]

    @classmethod
    def of(cls, state: ChainState) -> AggregateKey:
        rnd = state.round
        return cls(rnd.number, rnd.base_model, tuple(rnd.accepted_hashes))


def rounds_left(state: ChainState) -> bool:
    return state.round.number < state.config.training.rounds


def updates_still_arriving(state: ChainState, pending: Sequence[Transaction]) -> int | None:
    """How many of the open round's updates wait in ``pending``; None when none is expected.

    The proposer's wait uses it: while this count grows and other trainers' updates are
    still expected, proposing the ones in hand would cost the round an extra height.
    """
    rnd = state.round
    if not rnd.open:
        return None
    updates = pending_updates(state, pending)
    if not (state.trainers - rnd.submitted - {tx.author for tx in updates}):
        return None
    return len(updates)


def proposable_updates(
    state: ChainState, pending: Sequence[Transaction], has_blob: HasBlob | None
) -> list[Transaction]:
    """``pending_updates`` whose blob this node holds (all of them without ``has_blob``)."""
    updates = pending_updates(state, pending)
    if has_blob is None:
        return updates
    return [tx for tx in updates if has_blob(tx.body["blob"])]


def plan_block(
    state: ChainState,
    pending: Sequence[Transaction],
    *,
    height: int,
    key: nacl.signing.SigningKey,
    now_ms: int,
    verdict_of: VerdictOf,
    aggregate_of: AggregateOf,
    has_blob: HasBlob | None = None,
    max_txs: int = MAX_BLOCK_TXS,
    signed: MutableMapping[tuple[str, str, str, str], Transaction] | None = None,
) -> list[Transaction]:
    """The transactions of the block at ``height`` (``state`` is the state after height - 1).

    With ``has_blob``, an update whose blob it denies is left out (not dropped: it stays
    pending for a later block). ``signed`` keeps this proposer's validations by (update,
    verdict, reason, detail) to reuse: a node plans on every update that arrives, and signing
    each pending update's validation again every time was ~4% of its CPU with 10 members (a
    validation's ``time`` is not checked against the block's, §6.3).
    """
    chain = state.chain_id
    txs: list[Transaction] = []
    # no more join requests than the chain has room for, one per applicant and per name: each
    # one the rules would refuse costs ``build_proposal`` another apply of the whole block
    join_room = state.config.max_pending_joins - len(state.pending)
    join_keys: set[str] = set()
    for tx in pending:
        if len(txs) >= max_txs // 2:
            break
        if tx.kind is TxKind.JOIN_REQUEST:
            keys = {"did:" + tx.author, "name:" + str(tx.body["name"])}
            if join_room <= 0 or keys & join_keys:
                continue
            join_room -= 1
            join_keys |= keys
            txs.append(tx)
        elif tx.kind in (
            TxKind.APPROVE_MEMBER,
            TxKind.REMOVE_MEMBER,
            TxKind.MISBEHAVIOUR,
            TxKind.TLS_CERTIFICATE,
            TxKind.TLS_MODE,
        ):
            txs.append(tx)
    rnd = state.round
    time_ms = next_block_time(state.head_time, now_ms)
    if not rnd.open:
        txs += _open_next(state, rnd.model, height=height, key=key, now_ms=now_ms)
        return txs
    if state.round_may_close(height, time_ms):
        txs += _close_and_open(state, height=height, key=key, now_ms=now_ms, of=aggregate_of)
        return txs
    judged: list[tuple[Transaction, VerdictLike]] = []
    for update in proposable_updates(state, pending, has_blob):
        if len(txs) + 2 > max_txs:
            break
        verdict = verdict_of(update)
        if verdict is None:
            continue
        body = {
            "update": update.hash,
            "verdict": "accept" if verdict.accept else "reject",
            "reason": verdict.reason,
            "detail": verdict.detail,
        }
        memo = (update.hash, body["verdict"], verdict.reason, verdict.detail)
        validation = signed.get(memo) if signed is not None else None
        if validation is None:
            validation = make_tx(key, chain, TxKind.VALIDATION, body, time_ms=now_ms)
            if signed is not None:
                if len(signed) >= MAX_SIGNED_KEPT:
                    signed.clear()
                signed[memo] = validation
        txs += [update, validation]
        judged.append((update, verdict))
    if judged and len(txs) + 2 <= max_txs:
        after = state_after_updates(state, judged)
        if after.round_may_close(height, time_ms):
            txs += _close_and_open(after, height=height, key=key, now_ms=now_ms, of=aggregate_of)
    return txs


def state_after_updates(
    state: ChainState, judged: Sequence[tuple[Transaction, VerdictLike]]
) -> ChainState:
    """The state after ``judged`` updates and their validations, as far as the round goes.

    What ``ChainState.apply`` makes of ``update, validation`` pairs (§6.3), without the rest of
    a block: the round's accepted and submitted sets grow; used to ask for (and to prepare) the
    aggregate that may follow those updates in the same block. Read-only: never applied to.
    """
    rnd = state.round
    accepted = rnd.accepted + tuple(
        AcceptedUpdate(
            tx.hash, tx.author, tx.body["blob"], tx.body["blob_size"], tx.body["num_samples"]
        )
        for tx, verdict in judged
        if verdict.accept
    )
    after = copy.copy(state)
    after.round = dataclasses.replace(
        rnd, accepted=accepted, submitted=rnd.submitted | {tx.author for tx, _ in judged}
    )
    return after


def _open_next(
    state: ChainState, base_model: str, *, height: int, key: nacl.signing.SigningKey, now_ms: int
) -> list[Transaction]:
    """``open_round`` for the round after ``state.round`` on ``base_model``, if one is left.

    Its deadlines count from the block's own time (``next_block_time``, what ``build_block``
    will give the block proposed at ``now_ms``), as the rules require.
    """
    if not rounds_left(state):
        return []
    time_ms = next_block_time(state.head_time, now_ms)
    if state.config.training.round_deadline_s is not None and time_ms < now_ms - MAX_CLOCK_LAG_MS:
        # a chain idle for more than a day lags the clock (a block moves it a day at most): a
        # deadline counted from this block would be past already; catch up first (empty blocks)
        return []
    deadline_height, deadline_time = round_deadlines(state.config.training, height, time_ms)
    body: dict[str, Any] = {
        "round": state.round.number + 1,
        "base_model": base_model,
        "deadline_height": deadline_height,
    }
    if deadline_time is not None:
        body["deadline_time"] = deadline_time
    return [make_tx(key, state.chain_id, TxKind.OPEN_ROUND, body, time_ms=now_ms)]


def _close_and_open(
    state: ChainState,
    *,
    height: int,
    key: nacl.signing.SigningKey,
    now_ms: int,
    of: AggregateOf,
) -> list[Transaction]:
    """The open round's ``aggregate`` if prepared, then the next round's ``open_round``."""
    prepared = of(state)
    if prepared is None:
        return []
    model, size = prepared
    rnd = state.round
    body = {
        "round": rnd.number,
        "updates": rnd.accepted_hashes,
        "rule": state.config.aggregation_rule,
        "params": state.config.aggregation_params,
        "model": model,
        "model_size": size,
    }
    aggregate_tx = make_tx(key, state.chain_id, TxKind.AGGREGATE, body, time_ms=now_ms)
    return [aggregate_tx, *_open_next(state, model, height=height, key=key, now_ms=now_ms)]


def has_work(
    state: ChainState,
    pending: Sequence[Transaction],
    *,
    height: int,
    now_ms: int,
    verdict_of: VerdictOf,
    aggregate_of: AggregateOf,
    has_blob: HasBlob | None = None,
) -> bool:
    """Whether the block at ``height`` should be proposed now (else the proposer may wait).

    The proposer waits at most its idle interval (``empty_block_interval``) and then proposes
    what it has (``has_content``). Updates that do not yet complete the round's quorum count
    as work only when no other trainer's update is still expected: all the round's updates
    then go in one block, with the aggregate and the next open_round, instead of one block for
    the first update to arrive and another for the rest. A round whose deadline time has
    passed (by the time the block would carry) is work: that is the proposer's wake-up for it.
    """
    if any(tx.kind not in (TxKind.UPDATE,) for tx in pending):
        return True
    rnd = state.round
    if not rnd.open:
        return rounds_left(state)
    time_ms = next_block_time(state.head_time, now_ms)
    if state.round_may_close(height, time_ms):
        return aggregate_of(state) is not None
    judged = [
        (tx, verdict)
        for tx in proposable_updates(state, pending, has_blob)
        if (verdict := verdict_of(tx)) is not None
    ]
    if not judged:
        return False
    after = state_after_updates(state, judged)
    if after.round_may_close(height, time_ms):
        return aggregate_of(after) is not None
    return not (state.trainers - after.round.submitted)


def has_content(
    state: ChainState,
    pending: Sequence[Transaction],
    *,
    height: int,
    now_ms: int,
    verdict_of: VerdictOf,
    aggregate_of: AggregateOf,
    has_blob: HasBlob | None = None,
) -> bool:
    """Whether ``plan_block`` would put anything in the block at ``height`` now.

    What a proposer that makes no empty blocks asks once its idle interval has passed: a
    round's first updates (judged) are worth a block even while others are still expected;
    nothing at all is not.
    """
    if has_work(
        state,
        pending,
        height=height,
        now_ms=now_ms,
        verdict_of=verdict_of,
        aggregate_of=aggregate_of,
        has_blob=has_blob,
    ):
        return True
    if not state.round.open:
        return False
    return any(verdict_of(tx) is not None for tx in proposable_updates(state, pending, has_blob))


def needs_heartbeat(state: ChainState) -> bool:
    """Whether heights must grow while nothing happens, for the open round to reach its end.

    Only a round whose deadline is counted in blocks alone (a genesis with ``deadline_blocks``
    and no ``round_deadline_s``) needs that: its deadline comes only with new heights. A
    deadline in time wakes the proposer by itself, and a closed round or a finished plan needs
    nothing: an idle chain then makes no block at all until a transaction arrives (CometBFT's
    ``create_empty_blocks = false``).
    """
    rnd = state.round
    return rnd.open and rnd.deadline_height > 0 and not rnd.deadline_time


def build_proposal(
    state: ChainState,
    head: Block,
    txs: Sequence[Transaction],
    key: nacl.signing.SigningKey,
    *,
    now_ms: int,
    checks: AppChecks | None,
    on_dropped: Callable[[str, str], None] | None = None,
) -> tuple[Block, ChainState]:
    """The block of ``txs`` (minus any the rules refuse) and the state after it."""
    chosen = list(txs)
    for _ in range(len(chosen) + 1):
        block = build_block(state, head, chosen, key, time_ms=now_ms)
        try:
            return block, state.apply(block, checks=checks, verify_signatures=False, proposal=True)
        except VerificationError as exc:
            if exc.tx_hash is None or not chosen:
                raise
            log.info("left out of the proposal: %s", exc.message)
            if on_dropped is not None:
                on_dropped(exc.tx_hash, exc.code)
            chosen = _without(chosen, exc.tx_hash)
    raise VerificationError("no valid block could be built", height=head.height + 1)


def _without(txs: list[Transaction], tx_hash: str) -> list[Transaction]:
    """``txs`` less ``tx_hash``, keeping each update and its validation together."""
    out: list[Transaction] = []
    skip_next = False
    for i, tx in enumerate(txs):
        if skip_next:
            skip_next = False
            continue
        if tx.hash == tx_hash:
            if tx.kind is TxKind.UPDATE:
                skip_next = True
            elif tx.kind is TxKind.VALIDATION and out and out[-1].kind is TxKind.UPDATE:
                out.pop()
            continue
        nxt = txs[i + 1] if i + 1 < len(txs) else None
        if tx.kind is TxKind.UPDATE and nxt is not None and nxt.hash == tx_hash:
            continue
        out.append(tx)
    return out


# --- heavy work, run off the event loop ---------------------------------------------------------
