"""``bcfl submit``: upload an update blob, sign its ``update`` transaction, wait for the verdict."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nacl.signing

from bcfl_cli.client.api import DEFAULT_WAIT_S, NodeApi, Progress
from bcfl_cli.errors import (
    BcflError,
    EncodingError,
    NodeError,
    PlanFinished,
    UsageError,
)
from bcfl_cli.home import Home
from bcfl_cli.protocol.encoding import is_hash_hex, parse_json
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.wire.refusal import Refusal

UPDATES_DIR = "updates"
PUSH_TIMEOUT_S = 10.0
MAX_PUSH_PEERS = 64
_UPDATE_NAME = re.compile(r"^round-([0-9]{1,12})\.safetensors\Z")


@dataclass(frozen=True)
class UpdateFile:
    """An update written by ``bcfl train``: the delta as safetensors plus a JSON sidecar."""

    path: Path
    round: int
    base_model: str
    num_samples: int
    metrics: dict[str, str]
    chain_id: str | None = None  # recorded by `bcfl train`: the consortium it trained for
    blob: str | None = None  # recorded by `bcfl train`: the hash of the update file


def updates_dir(home: Home) -> Path:
    return home.root / UPDATES_DIR


def latest_update(home: Home) -> Path:
    """The update of the highest round in ``HOME/updates`` (``round-N.safetensors``)."""
    folder = updates_dir(home)
    found: list[tuple[int, Path]] = []
    if folder.is_dir():
        for path in folder.iterdir():
            match = _UPDATE_NAME.match(path.name)
            if match and path.is_file():
                found.append((int(match.group(1)), path))
    if not found:
        raise UsageError(
            f"no update in {folder}", hint="train one with `bcfl train`, or name the file"
        )
    return max(found)[1]


def read_update(path: Path) -> UpdateFile:
    """An update file and its sidecar ``*.json`` (round, base_model, num_samples, metrics)."""
    sidecar = path.with_suffix(".json")
    if not path.is_file():
        raise UsageError(f"no update file {path}")
    try:
        meta = parse_json(sidecar.read_bytes())
    except FileNotFoundError:
        raise UsageError(
            f"{path} has no sidecar {sidecar.name}",
            hint="updates come from `bcfl train`, which writes both files",
        ) from None
    except EncodingError as exc:
        raise UsageError(f"{sidecar}: {exc.message}") from exc
    if not isinstance(meta, dict):
        raise UsageError(f"{sidecar}: expected a JSON object")
    try:
        update = UpdateFile(
            path=path,
            round=_int_field(meta, "round"),
            base_model=str(meta["base_model"]),
            num_samples=_int_field(meta, "num_samples"),
            metrics={str(k): str(v) for k, v in dict(meta.get("metrics", {})).items()},
            chain_id=str(meta["chain_id"]) if "chain_id" in meta else None,
            blob=str(meta["blob"]) if "blob" in meta else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UsageError(f"{sidecar}: missing or invalid field {exc}") from exc
    if not is_hash_hex(update.base_model):
        raise UsageError(f"{sidecar}: base_model is not a blob hash")
    return update


def _int_field(meta: dict[str, Any], name: str) -> int:
    value = meta[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(name)
    return value


@dataclass(frozen=True)
class SubmitOutcome:
    tx_hash: str
    blob: str
    blob_size: int
    round: int
    accepted: bool
    reason: str
    detail: str = ""
    height: int | None = None
    #: peers of the node the blob could not be pushed to ("URL: why")
    unreached: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return vars(self) | {"verdict": "accept" if self.accepted else "reject"}


def build_update_tx(
    key: nacl.signing.SigningKey,
    chain_id: str,
    *,
    round_number: int,
    base_model: str,
    blob: str,
    blob_size: int,
    num_samples: int,
    metrics: dict[str, str],
) -> Transaction:
    body = {
        "round": round_number,
        "base_model": base_model,
        "blob": blob,
        "blob_size": blob_size,
        "num_samples": num_samples,
        "metrics": metrics,
    }
    try:
        return make_tx(key, chain_id, TxKind.UPDATE, body)
    except EncodingError as exc:
        raise UsageError(f"the update cannot be signed as it is: {exc.message}") from exc


def ensure_plan_running(api: NodeApi) -> None:
    """PlanFinished if the member's node says the training plan is over.

    Asked before anything is uploaded or signed: the node would only refuse the update
    (``training_finished``), and the member's last ``bcfl train`` wrote none to submit.
    """
    plan = api.status().plan
    if plan is not None and plan.finished:
        raise PlanFinished(plan.rounds)


def submit_update(
    home: Home,
    key: nacl.signing.SigningKey,
    api: NodeApi,
    update: UpdateFile,
    *,
    wait_s: float = DEFAULT_WAIT_S,
    progress: Progress | None = None,
) -> SubmitOutcome:
    """Upload the update blob, submit its signed ``update`` tx and wait for the verdict.

    A refusal at the door (the node's mempool checks the round, base model and duplicates) is
    a rejection with the node's code as reason, like a contract rejection on chain.
    PlanFinished, before anything is uploaded, when the node says the plan is over.
    """
    ensure_plan_running(api)
    with Ledger.open(home) as ledger:
        chain_id = ledger.genesis_hash
        blobs = ledger.blobs
    if update.chain_id is not None and update.chain_id != chain_id:
        raise UsageError(
            f"{update.path} was trained for consortium {update.chain_id}, not {chain_id}",
            hint="train again with this home (`bcfl train`)",
        )
    digest = blobs.put_file(update.path)
    if update.blob is not None and update.blob != digest:
        raise UsageError(
            f"{update.path} changed since `bcfl train` wrote it (hash {digest}, "
            f"sidecar says {update.blob})"
        )
    size = blobs.size(digest)
    api.upload_blob(digest, blobs, progress=progress)
    missed = push_to_peers(api, key, digest, blobs)
    tx = build_update_tx(
        key,
        chain_id,
        round_number=update.round,
        base_model=update.base_model,
        blob=digest,
        blob_size=size,
        num_samples=update.num_samples,
        metrics=update.metrics,
    )

    def outcome(
        accepted: bool, reason: str, detail: str = "", height: int | None = None
    ) -> SubmitOutcome:
        return SubmitOutcome(
            tx.hash, digest, size, update.round, accepted, reason, detail, height, missed
        )

    try:
        api.submit_tx(tx)
    except Refusal as exc:
        if 400 <= exc.status < 500 and exc.status not in (401, 403, 413, 429):
            return outcome(False, exc.code, exc.message)
        raise
    status = api.wait_for_tx(tx.hash, wait_s)
    if status.status == "rejected":
        return outcome(False, status.reason or "rejected", "dropped before commit")
    if status.height is None:
        raise NodeError(f"{api.url} reports {tx.hash[:16]} committed at no height")
    verdict = find_verdict(api, tx.hash, status.height)
    return outcome(verdict[0], verdict[1], verdict[2], status.height)


def push_to_peers(
    api: NodeApi,
    key: nacl.signing.SigningKey,
    digest: str,
    blobs: BlobStore,
    *,
    timeout_s: float = PUSH_TIMEOUT_S,
    connect: Callable[[str], NodeApi] | None = None,
) -> list[str]:
    """Offer the update blob to the peers of the member's node too, best effort.

    Validators fetch an update's blob from the peers they know; a member admitted after the
    founders started is known to none of them, so its own node alone cannot serve the blob to
    them. Uploads are resumable and idempotent (a peer that has the blob answers at once).
    A peer whose member only trains is skipped: its node fetches each round's model, not the
    others' updates (issue 19), so the blob, up to the genesis cap, would go there for nothing.
    Returns ``"URL: why"`` for each peer that could not be reached.
    """
    status = api.status()
    trains_only = {
        m.did
        for m in status.members
        if m.status == "active"
        and "trainer" in m.roles
        and ("validator" not in m.roles or m.power <= 0)
    }
    urls = [peer.url for peer in status.peers if peer.did is None or peer.did not in trains_only]
    missed: list[str] = []
    for url in urls[:MAX_PUSH_PEERS]:
        try:
            peer_api = connect(url) if connect else NodeApi(url, key, timeout=timeout_s, retries=1)
            with peer_api as peer:
                peer.upload_blob(digest, blobs, progress=None)
        except (BcflError, httpx.HTTPError) as exc:
            missed.append(f"{url}: {exc}")
    return missed


def find_verdict(api: NodeApi, update_hash: str, height: int) -> tuple[bool, str, str]:
    """The ``validation`` that follows the update in its block: (accept, reason, detail)."""
    block = api.block(height)
    if block is None:
        raise NodeError(f"{api.url} reports block {height} but does not serve it")
    for tx in block.txs:
        if tx.kind is TxKind.VALIDATION and tx.body["update"] == update_hash:
            body = tx.body
            return body["verdict"] == "accept", str(body["reason"]), str(body["detail"])
    raise NodeError(f"block {height} holds update {update_hash[:16]} without its validation")
