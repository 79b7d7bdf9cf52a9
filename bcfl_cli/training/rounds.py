"""What a proposer takes from the pool for the open round, and the round's aggregate.

Pure functions of the chain state and the blob store, shared by the node's round driver and
``bcfl simulate``, so that both plan and aggregate a round the same way.
"""

from __future__ import annotations

from collections.abc import Sequence

from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import BlobError
from bcfl_cli.fl.aggregation import UpdateInput, aggregate, rule_needs_initial_model
from bcfl_cli.fl.tensors import decode_tensors
from bcfl_cli.fl.views import Blobs
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


def compute_aggregate(state: ChainState, blobs: Blobs) -> tuple[str, int]:
    """(model hash, size) of the open round's aggregate; the model blob is stored in ``blobs``.

    The same computation as ``FLChecks.check_aggregate`` (fl.aggregation over the accepted
    update blobs on top of the base model), so every validator recomputes these exact bits.
    """
    rnd = state.round
    cfg = state.config
    limit = cfg.contract.max_blob_bytes
    if not rnd.accepted:
        return rnd.base_model, blobs.size(rnd.base_model)

    def load(digest: str) -> bytes:
        if not blobs.has(digest):
            raise BlobError(f"blob {digest} is missing", hint="fetch it from a peer")
        return blobs.get(digest, max_bytes=limit)

    base = decode_tensors(load(rnd.base_model), max_bytes=limit)
    updates = [
        UpdateInput(u.tx, decode_tensors(load(u.blob), max_bytes=limit), u.num_samples)
        for u in rnd.accepted
    ]
    initial = None
    if rule_needs_initial_model(cfg.aggregation.rule):
        initial = decode_tensors(load(cfg.initial_model), max_bytes=limit)
    result = aggregate(cfg.aggregation, base, updates, initial_state=initial)
    data = result.model_bytes
    blobs.put(data)
    return result.model_hash, len(data)
