"""``bcfl model export``: a round's global model, checked against the chain, with proof and card."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bcfl_cli.client.api import NodeApi, Progress
from bcfl_cli.errors import (
    BlobError,
    UsageError,
    VerificationError,
)
from bcfl_cli.home import Home
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.provenance.build import build_proof
from bcfl_cli.provenance.card import card_markdown
from bcfl_cli.provenance.verify import verify_model
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger


@dataclass(frozen=True)
class ExportOutcome:
    round: int
    model: str
    size: int
    path: Path
    height: int | None  # height of the aggregate (None: the genesis initial model)
    fetched: bool
    proof: Path | None = None  # the proof bundle written beside the model (PROTOCOL.md §9)
    proof_size: int = 0
    card: Path | None = None  # the model card (Markdown) written from the verified proof

    def to_json(self) -> dict[str, Any]:
        return vars(self) | {
            "path": str(self.path),
            "proof": str(self.proof) if self.proof else None,
            "card": str(self.card) if self.card else None,
        }


def round_models(ledger: Ledger) -> dict[int, tuple[str, int | None]]:
    """Round -> (global model hash, height of its aggregate); round 0 is the initial model."""
    models: dict[int, tuple[str, int | None]] = {0: (str(ledger.document["initial_model"]), None)}
    for block in ledger.blocks(1):
        for tx in block.txs:
            if tx.kind is TxKind.AGGREGATE:
                models[int(tx.body["round"])] = (str(tx.body["model"]), block.height)
    return models


def export_model(
    home: Home,
    out: Path,
    *,
    round_number: int | None = None,
    api: NodeApi | None = None,
    progress: Progress | None = None,
    proof: Path | None = None,
    card: Path | None = None,
) -> ExportOutcome:
    """Write the global model of a round to ``out``, its hash checked against the chain.

    With ``proof``, also the bundle that lets anyone check the model offline (PROTOCOL.md §9),
    verified here against the model just written before it is kept; with ``card``, the model
    card (Markdown) that verified bundle shows.
    """
    with Ledger.open(home) as ledger:
        models = round_models(ledger)
        blobs = ledger.blobs
        max_bytes = int(ledger.document["contract"]["max_blob_bytes"])
        number = max(models) if round_number is None else round_number
        if number not in models:
            raise UsageError(
                f"round {number} has no aggregate on this member's chain "
                f"(rounds with a model: {sorted(models)})",
                hint="round 0 is the genesis initial model",
            )
        bundle = None
        if proof is not None:
            compress = proof.name.endswith(".gz")
            bundle = build_proof(ledger, number).to_bytes(compress=compress)
        genesis = ledger.genesis_hash
    digest, height = models[number]
    fetched = False
    if not blobs.verify(digest):
        if api is None:
            raise BlobError(
                f"model {digest} of round {number} is not in {blobs.root}",
                hint="pass --node URL to fetch it",
            )
        api.fetch_blob(digest, blobs, max_bytes=max_bytes, progress=progress)
        fetched = True
    size = _copy_checked(blobs, digest, out)
    if bundle is None or proof is None:
        return ExportOutcome(number, digest, size, out, height, fetched)
    report = verify_model(bundle, genesis, out.expanduser())
    if report.fault is not None or report.history is None:
        why = f"{report.fault.code}: {report.fault.message}" if report.fault else "no history"
        raise VerificationError(
            f"the proof built for round {number} does not verify ({why})",
            hint="run `bcfl verify-chain` on this member's store",
        )
    _write_atomic(proof, bundle)
    if card is not None:
        _write_atomic(card, card_markdown(report.history).encode("utf-8"))
    return ExportOutcome(number, digest, size, out, height, fetched, proof, len(bundle), card)


def _write_atomic(path: Path, data: bytes) -> None:
    path = path.expanduser()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as sink:
            sink.write(data)
            sink.flush()
            os.fsync(sink.fileno())
        os.replace(tmp_name, path)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _copy_checked(blobs: BlobStore, digest: str, out: Path) -> int:
    """Stream the blob into ``out`` atomically, re-hashing what is written."""
    out = out.expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    tmp = Path(tmp_name)
    hasher = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(fd, "wb") as sink, blobs.open(digest) as source:
            for chunk in _chunks(source):
                hasher.update(chunk)
                sink.write(chunk)
                size += len(chunk)
            sink.flush()
            os.fsync(sink.fileno())
        if hasher.hexdigest() != digest:
            raise BlobError(
                f"stored model {digest} is corrupt (its bytes hash to {hasher.hexdigest()})",
                hint="delete the blob file and export again with --node URL to refetch it",
            )
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return size


def _chunks(source: Any) -> Iterator[bytes]:
    while chunk := source.read(1024 * 1024):
        yield chunk
