"""The FL engine's side of the chain rules: the contract and the aggregate, recomputed.

``ChainState.apply`` calls these hooks (``bcfl_cli.chain.checks.AppChecks``) for every
``update`` (its ``validation`` must state the contract's verdict) and every ``aggregate`` (its
``model`` must be the hash of what the genesis rule computes from the accepted update blobs on
top of the round's base model). Everything is read from the content-addressed blob store, so
nothing here depends on who sent what, or in which order it arrived.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections import OrderedDict
from pathlib import Path

from bcfl_cli.errors import BlobError, ContractError
from bcfl_cli.fl.aggregation import rule_needs_initial_model
from bcfl_cli.fl.contract import (
    Layout,
    Reason,
    RoundContext,
    UpdateClaim,
    Verdict,
    check_update,
    layout_for,
)
from bcfl_cli.fl.stored_aggregate import BlobFiles, RoundBlobs, aggregate_file, keep_as_blob
from bcfl_cli.fl.tensorfile import TensorFile, sha256_of
from bcfl_cli.fl.update_summary import UpdateSummaries
from bcfl_cli.fl.views import StateView
from bcfl_cli.protocol.spec import ModelSpec
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.protocol.txbodies import AggregateBody

#: Recomputed models that the store does not hold, kept as files (never decoded in memory)
#: when ``keep_models`` is off: aggregate n's result is round n+1's base, so two are enough.
MODEL_CACHE = 2


class FLChecks:
    """``AppChecks`` backed by a blob store.

    ``keep_models`` stores each recomputed aggregate model in the blob store when it matches
    the transaction, so a peer that verified a round also holds the next round's base model.
    Without it (a read-only ``verify-chain --deep``), the last ``MODEL_CACHE`` recomputed
    models the store lacks are kept as files in a private temporary folder of the store.
    """

    def __init__(
        self,
        blobs: BlobFiles,
        *,
        keep_models: bool = True,
        summaries: UpdateSummaries | None = None,
    ) -> None:
        self.blobs = blobs
        self.keep_models = keep_models
        #: what a node computed of each update as it was received (``update_summary``)
        self.summaries = summaries
        self._models: OrderedDict[str, Path] = OrderedDict()
        self._held_dir: Path | None = None
        self._app_layout: tuple[str, Layout] | None = None
        self._spec_layout: tuple[ModelSpec, Layout] | None = None

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
        summary = None
        if blob is not None and self.summaries is not None:
            summary = self.summaries.get(claim.blob)
        return check_update(
            cfg.contract, layout, claim, ctx, blob, named_by_hash=True, summary=summary
        )

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
        initial = None
        if rule_needs_initial_model(cfg.aggregation.rule):
            initial = cfg.initial_model
        inputs = RoundBlobs(
            rnd.base_model, [(u.tx, u.blob, u.num_samples) for u in rnd.accepted], initial
        )
        with aggregate_file(
            self.blobs,
            cfg.aggregation,
            inputs,
            max_bytes=cfg.contract.max_blob_bytes,
            paths=dict(self._models),
        ) as (result, written):
            if result.model_hash != body.model or result.model_size != body.model_size:
                raise ContractError(
                    "aggregate_mismatch",
                    f"round {rnd.number} under {result.rule!r}: expected model "
                    f"{result.model_hash} ({result.model_size} bytes), found {body.model} "
                    f"({body.model_size} bytes)",
                )
            if self.keep_models:
                keep_as_blob(self.blobs, written, result.model_hash, result.content_sum)
            elif not self.blobs.has(result.model_hash):
                self._hold(written, result.model_hash)

    def _hold(self, written: Path, digest: str) -> None:
        """Keep a recomputed model the store lacks as a file: the next round's base."""
        if self._held_dir is None:
            tmp = self.blobs.root / "tmp"
            tmp.mkdir(exist_ok=True)
            self._held_dir = Path(tempfile.mkdtemp(dir=tmp, prefix="models-"))
            weakref.finalize(self, shutil.rmtree, self._held_dir, ignore_errors=True)
        path = self._held_dir / digest
        written.replace(path)
        self._models[digest] = path
        self._models.move_to_end(digest)
        while len(self._models) > MODEL_CACHE:
            _, old = self._models.popitem(last=False)
            old.unlink(missing_ok=True)


__all__ = ["FLChecks", "Verdict", "layout_for"]
