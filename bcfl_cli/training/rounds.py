"""What a proposer takes from the pool for the open round, and the round's aggregate.

Pure functions of the chain state and the blob store, shared by the node's round driver and
``bcfl simulate``, so that both plan and aggregate a round the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from bcfl_cli.chain.state import ChainState
from bcfl_cli.fl.aggregation import rule_needs_initial_model
from bcfl_cli.fl.stored_aggregate import BlobFiles, RoundBlobs, aggregate_file, keep_as_blob
from bcfl_cli.protocol.tx import Transaction, TxKind


def pending_updates(state: ChainState, pending: Sequence[Transaction]) -> list[Transaction]:
    """Updates in ``pending`` that fit the open round (one per author, arrival order)."""
    rnd = state.round
    if not rnd.open:
        return []
    seen = set(rnd.submitted)
    out = []
    for tx in pending:
        if tx.kind is not TxKind.UPDATE or tx.author in seen:
            continue
        if tx.body["round"] != rnd.number or tx.body["base_model"] != rnd.base_model:
            continue
        seen.add(tx.author)
        out.append(tx)
    return out


def compute_aggregate(state: ChainState, blobs: BlobFiles) -> tuple[str, int]:
    """(model hash, size) of the open round's aggregate; the model blob is stored in ``blobs``.

    The same computation as ``FLChecks.check_aggregate`` (fl.aggregation streamed over the
    accepted update blobs on top of the base model, ``fl.stored_aggregate``), so every
    validator recomputes these exact bits; no model is ever held whole in memory.
    """
    rnd = state.round
    cfg = state.config
    if not rnd.accepted:
        return rnd.base_model, blobs.size(rnd.base_model)
    initial = cfg.initial_model if rule_needs_initial_model(cfg.aggregation.rule) else None
    inputs = RoundBlobs(
        rnd.base_model, [(u.tx, u.blob, u.num_samples) for u in rnd.accepted], initial
    )
    limit = cfg.contract.max_blob_bytes
    with aggregate_file(blobs, cfg.aggregation, inputs, max_bytes=limit) as (result, written):
        keep_as_blob(blobs, written, result.model_hash, result.content_sum)
    return result.model_hash, result.model_size
