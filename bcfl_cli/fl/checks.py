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
    check_update,
    layout_for,
)
from bcfl_cli.fl.tensorfile import TensorFile, sha256_of
from bcfl_cli.fl.tensors import decode_tensors
from bcfl_cli.fl.views import Blobs, StateView
from bcfl_cli.protocol.spec import ModelSpec
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.protocol.txbodies import AggregateBody

#: Decoded global models kept in memory: a deep verification reads each one twice in a row
#: (aggregate n's result is round n+1's base), so two are enough.
MODEL_CACHE = 2


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
            # The file, not its bytes: the contract reads it a piece at a time, and a copy
            # whose content does not hash to its name raises (corrupt), as ``get`` did.
            blob = self.blobs.path_for(claim.blob)
        layout = self._layout(state)
        return check_update(cfg.contract, layout, claim, ctx, blob, named_by_hash=True)

    def _layout(self, state: StateView) -> ModelSpec | Layout:
        """What an update must look like: for a builtin architecture, its spec; for a model
        app, the genesis' initial weights (tensors, never the app: verifying needs no app)."""
        cfg = state.config
        if isinstance(cfg.model, ModelSpec):
            return cfg.model
        if self._app_layout is None or self._app_layout[0] != cfg.initial_model:
            found = self._initial_layout(cfg.initial_model, cfg.contract.max_blob_bytes)
            if any(dtype != "F32" for dtype, _ in found.values()):
                raise ContractError("wrong_dtype", "the genesis initial model is not all float32")
            self._app_layout = (cfg.initial_model, found)
        return self._app_layout[1]

    def _initial_layout(self, digest: str, max_bytes: int) -> Layout:
        """The genesis model's layout from its header; its tensors are not read (only hashed,
        a MiB at a time, since a corrupt copy would change every verdict)."""
        if not self.blobs.has(digest):
            raise BlobError(f"blob {digest} is missing", hint="fetch it from a peer")
        try:
            with TensorFile.open(self.blobs.path_for(digest), max_bytes=max_bytes) as file:
                if sha256_of(file.source) != digest:
                    raise BlobError(
                        f"blob {digest} is corrupt: its content does not match its name"
                    )
                return {name: (dtype, tuple(shape)) for name, (dtype, shape) in file.layout.items()}
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing", hint="fetch it from a peer") from None

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
            UpdateInput(u.tx, self._decode(u.blob, limit), u.num_samples) for u in rnd.accepted
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
