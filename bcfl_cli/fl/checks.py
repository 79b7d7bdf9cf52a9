"""The FL engine's side of the chain rules: the contract and the aggregate, recomputed.

``ChainState.apply`` calls these hooks (``bcfl_cli.chain.checks.AppChecks``) for every
``update`` (its ``validation`` must state the contract's verdict) and every ``aggregate`` (its
``model`` must be the hash of what the genesis rule computes from the accepted update blobs on
top of the round's base model). Everything is read from the content-addressed blob store, so
nothing here depends on who sent what, or in which order it arrived.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from bcfl_cli.errors import BlobError, ContractError
from bcfl_cli.fl.aggregation import UpdateInput, aggregate, rule_needs_initial_model
from bcfl_cli.fl.contract import (
    Layout,
    Reason,
    RoundContext,
    UpdateClaim,
    Verdict,
    check_update_decoded,
    layout_for,
    layout_of,
)
from bcfl_cli.fl.tensors import decode_tensors
from bcfl_cli.fl.views import Blobs, StateView
from bcfl_cli.protocol.spec import ModelSpec
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.protocol.txbodies import AggregateBody

#: Decoded global models kept in memory: a deep verification reads each one twice in a row
#: (aggregate n's result is round n+1's base), so two are enough.
MODEL_CACHE = 2
#: Decoded deltas of accepted updates kept for their round's aggregate, which would otherwise
#: read and decode every one again (least recently kept dropped first, then decoded again from
#: its blob when the aggregate comes): bounded in count and in tensor bytes, whoever sends.
DELTA_CACHE_ENTRIES = 256
DELTA_CACHE_BYTES = 256 * 1024 * 1024


class FLChecks:
    """``AppChecks`` backed by a blob store.

    ``keep_models`` stores each recomputed aggregate model in the blob store when it matches
    the transaction, so a peer that verified a round also holds the next round's base model.
    """

    def __init__(self, blobs: Blobs, *, keep_models: bool = True) -> None:
        self.blobs = blobs
        self.keep_models = keep_models
        self._models: OrderedDict[str, dict[str, torch.Tensor]] = OrderedDict()
        self._initial: tuple[str, dict[str, torch.Tensor]] | None = None
        self._app_layout: tuple[str, Layout] | None = None
        self._spec_layout: tuple[ModelSpec, Layout] | None = None
        # blob hash -> (blob size, decoded delta), for check_aggregate
        self._deltas: OrderedDict[str, tuple[int, dict[str, torch.Tensor]]] = OrderedDict()
        self._delta_bytes = 0

    # --- updates ---------------------------------------------------------------------------
    def check_update(self, state: StateView, tx: Transaction) -> Verdict:
        """The contract's verdict on ``tx`` in ``state`` (before its own validation applies)."""
        if tx.kind is not TxKind.UPDATE:
            raise ContractError("not_an_update", f"transaction {tx.hash} is a {tx.kind}")
        cfg = state.config
        rnd = state.round
        claim = UpdateClaim.from_body(tx.author, tx.body)
        ctx = RoundContext(
            trainers=state.trainers,
            round=rnd.number if rnd.number > 0 else None,
            round_open=rnd.open,
            base_model=rnd.base_model,
            submitted=rnd.submitted,
        )
        limit = cfg.contract.max_blob_bytes
        blob = None
        if claim.blob_size <= limit and self.blobs.has(claim.blob):
            size = self.blobs.size(claim.blob)
            if size > limit:
                # The claim understates the size; never read more than the limit.
                return Verdict.reject(Reason.BLOB_TOO_LARGE, f"{size} bytes, limit {limit}")
            blob = self.blobs.get(claim.blob, max_bytes=limit)  # a corrupt copy raises
        verdict, delta = check_update_decoded(cfg.contract, self._layout(state), claim, ctx, blob)
        if verdict.accept and delta is not None and blob is not None:
            self._keep_delta(claim.blob, len(blob), delta)
        return verdict

    def _keep_delta(self, digest: str, size: int, delta: dict[str, torch.Tensor]) -> None:
        nbytes = sum(t.nelement() * t.element_size() for t in delta.values())
        if nbytes > DELTA_CACHE_BYTES:
            return
        self._drop_delta(digest)
        self._deltas[digest] = (size, delta)
        self._delta_bytes += nbytes
        while len(self._deltas) > DELTA_CACHE_ENTRIES or self._delta_bytes > DELTA_CACHE_BYTES:
            self._drop_delta(next(iter(self._deltas)))

    def _drop_delta(self, digest: str) -> dict[str, torch.Tensor] | None:
        kept = self._deltas.pop(digest, None)
        if kept is None:
            return None
        self._delta_bytes -= sum(t.nelement() * t.element_size() for t in kept[1].values())
        return kept[1]

    def _update_delta(self, digest: str, max_bytes: int) -> dict[str, torch.Tensor]:
        """An accepted update's tensors: as decoded when its verdict was checked (a blob's
        content is fixed by its hash), or decoded again; taken once, as a round's aggregate
        reads each once. The blob must still be there, as when it is decoded again (its
        content is hashed again by verify-chain's blob checks, §7); one over today's limit is
        decoded again, to be refused as before."""
        kept = self._deltas.get(digest)
        if kept is not None and kept[0] <= max_bytes and self.blobs.has(digest):
            delta = self._drop_delta(digest)
            assert delta is not None
            return delta
        return self._decode(digest, max_bytes)

    def _layout(self, state: StateView) -> Layout:
        """What an update must look like: for a builtin architecture, its spec; for a model
        app, the genesis' initial weights (tensors, never the app: verifying needs no app)."""
        cfg = state.config
        if isinstance(cfg.model, ModelSpec):
            # layout_for serialises the spec for its cache key (~50 us): once per spec here
            if self._spec_layout is None or self._spec_layout[0] != cfg.model:
                self._spec_layout = (cfg.model, layout_for(cfg.model))
            return self._spec_layout[1]
        if self._app_layout is None or self._app_layout[0] != cfg.initial_model:
            initial = self._initial_model(cfg.initial_model, cfg.contract.max_blob_bytes)
            if any(t.dtype != torch.float32 for t in initial.values()):
                raise ContractError("wrong_dtype", "the genesis initial model is not all float32")
            self._app_layout = (cfg.initial_model, layout_of(initial))
        return self._app_layout[1]

    # --- aggregates ------------------------------------------------------------------------
    def check_aggregate(self, state: StateView, tx: Transaction) -> None:
        """Recompute the round's aggregate; raise ContractError unless ``model`` matches."""
        body = tx.parsed_body
        if not isinstance(body, AggregateBody):
            raise ContractError("not_an_aggregate", f"transaction {tx.hash} is a {tx.kind}")
        rnd = state.round
        if not rnd.accepted:
            if body.model != rnd.base_model:
                raise ContractError(
                    "aggregate_mismatch",
                    f"no accepted update: expected the base model {rnd.base_model}, "
                    f"found {body.model}",
                )
            return
        cfg = state.config
        limit = cfg.contract.max_blob_bytes
        base = self._model(rnd.base_model, limit)
        updates = [
            UpdateInput(u.tx, self._update_delta(u.blob, limit), u.num_samples)
            for u in rnd.accepted
        ]
        initial = None
        if rule_needs_initial_model(cfg.aggregation.rule):
            initial = self._initial_model(cfg.initial_model, limit)
        result = aggregate(cfg.aggregation, base, updates, initial_state=initial)
        data = result.model_bytes
        if result.model_hash != body.model or len(data) != body.model_size:
            raise ContractError(
                "aggregate_mismatch",
                f"round {rnd.number} under {result.rule!r}: expected model {result.model_hash} "
                f"({len(data)} bytes), found {body.model} ({body.model_size} bytes)",
            )
        if self.keep_models and not self.blobs.has(result.model_hash):
            self.blobs.put(data)
        self._remember(result.model_hash, result.new_state)

    def _initial_model(self, digest: str, max_bytes: int) -> dict[str, torch.Tensor]:
        """The genesis model, decoded once (rules that read the trajectory need it each round)."""
        if self._initial is None or self._initial[0] != digest:
            self._initial = (digest, self._decode(digest, max_bytes))
        return self._initial[1]

    def _decode(self, digest: str, max_bytes: int) -> dict[str, torch.Tensor]:
        if not self.blobs.has(digest):
            raise BlobError(f"blob {digest} is missing", hint="fetch it from a peer")
        return decode_tensors(self.blobs.get(digest, max_bytes=max_bytes), max_bytes=max_bytes)

    def _model(self, digest: str, max_bytes: int) -> dict[str, torch.Tensor]:
        cached = self._models.get(digest)
        if cached is None:
            cached = self._decode(digest, max_bytes)
            self._remember(digest, cached)
        return cached

    def _remember(self, digest: str, state: dict[str, torch.Tensor]) -> None:
        self._models[digest] = state
        self._models.move_to_end(digest)
        while len(self._models) > MODEL_CACHE:
            self._models.popitem(last=False)


__all__ = ["FLChecks", "Verdict", "layout_for"]
