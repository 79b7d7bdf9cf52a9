"""``bcfl join``: check the genesis a node serves, pin it in a new home, ask to be admitted."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import nacl.signing

from bcfl_cli.chain.state import ChainState
from bcfl_cli.client.api import NodeApi, Progress
from bcfl_cli.errors import (
    BlobError,
    StoreError,
    UsageError,
    VerificationError,
)
from bcfl_cli.home import Home
from bcfl_cli.identity.tls_cert import read_fingerprint
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import hash_object
from bcfl_cli.protocol.tx import ROLES, TxKind, make_tx
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger, ledger_exists
from bcfl_cli.store.location import home_store_url


@dataclass(frozen=True)
class RemoteGenesis:
    """A genesis served by a node, checked to be consistent with itself."""

    url: str
    block: Block
    document: dict[str, Any]
    state: ChainState

    @property
    def hash(self) -> str:
        return self.block.hash

    @property
    def consortium(self) -> str:
        return self.state.config.name

    @property
    def initial_model(self) -> str:
        return self.state.config.initial_model

    @property
    def max_blob_bytes(self) -> int:
        return int(self.state.config.contract.max_blob_bytes)


def fetch_genesis(api: NodeApi) -> RemoteGenesis:
    """The node's genesis block and document, with header.config == hash(document) checked.

    ``ChainState.from_genesis`` checks every genesis header field against the document (the
    config hash, the founding validator set, no transactions, no commit), so what the member
    confirms is one consistent consortium, named by the block hash it is shown.
    """
    block, document = api.genesis()
    config_hash = hash_object(document)
    if block.header.config != config_hash:
        raise VerificationError(
            f"{api.url} serves a genesis whose header.config {block.header.config} is not the "
            f"hash of its document ({config_hash})",
            height=0,
            code="genesis_config",
            hint="this node is broken or lying; ask the consortium for another URL",
        )
    try:
        state = ChainState.from_genesis(block, document)
    except VerificationError as exc:
        raise VerificationError(
            f"{api.url} serves an inconsistent genesis: {exc.message}",
            height=0,
            code=exc.code,
            hint="ask the consortium for another URL",
        ) from exc
    return RemoteGenesis(api.url, block, document, state)


def check_pinned_hash(remote: RemoteGenesis, expected: str) -> None:
    """``--genesis-hash``: the consortium the member was told to join, and no other."""
    if expected.strip().lower() != remote.hash:
        raise VerificationError(
            f"{remote.url} serves genesis {remote.hash}, not the expected {expected.strip()}",
            height=0,
            code="genesis_mismatch",
            hint="check the URL and the hash the consortium gave you",
        )


def parse_roles(text: str) -> list[str]:
    roles = sorted({r.strip() for r in text.split(",") if r.strip()})
    unknown = [r for r in roles if r not in ROLES]
    if not roles or unknown:
        raise UsageError(f"--roles {text!r}: expected a comma-separated subset of {list(ROLES)}")
    return roles


@dataclass(frozen=True)
class JoinOutcome:
    genesis_hash: str
    consortium: str
    tx_hash: str
    did: str
    name: str
    roles: list[str]
    power: int
    approvals_needed: int
    node_url: str
    ledger_created: bool
    validators: list[str] = field(default_factory=list)


def join_consortium(
    home: Home,
    key: nacl.signing.SigningKey,
    api: NodeApi,
    remote: RemoteGenesis,
    *,
    name: str,
    roles: list[str],
    power: int,
    progress: Progress | None = None,
) -> JoinOutcome:
    """Pin ``remote``'s genesis in a new local ledger and ask the node to admit this member.

    The initial model is fetched (checked against the document's hash) before the ledger is
    created, so a home never holds a genesis whose model it lacks. Running it again with the
    same genesis keeps the ledger and only re-sends the request; another genesis is refused.
    """
    did = did_from_public_key(bytes(key.verify_key))
    member = remote.state.member(did)
    if member is not None:
        raise UsageError(
            f"{did} is already a member of {remote.consortium} ({member.status})",
            hint="a founding member does not join: it runs `bcfl init CONSORTIUM.toml --time-ms "
            f"{remote.block.header.time} --home HOME` (the genesis time the other founders "
            "used) and compares the genesis hash",
        )
    created = _pin_genesis(home, api, remote, progress)
    body: dict[str, Any] = {"name": name, "roles": sorted(roles), "power": power}
    fingerprint = read_fingerprint(home)  # `bcfl tls init`: pinned on admission (issue 22)
    if fingerprint is not None:
        body["tls"] = fingerprint
    tx = make_tx(key, remote.hash, TxKind.JOIN_REQUEST, body)
    api.submit_tx(tx, path="/join")
    config = remote.state.config
    return JoinOutcome(
        genesis_hash=remote.hash,
        consortium=remote.consortium,
        tx_hash=tx.hash,
        did=did,
        name=name,
        roles=sorted(roles),
        power=power,
        approvals_needed=config.admission_approvals,
        node_url=api.url,
        ledger_created=created,
        validators=sorted(m.name for m in remote.state.members.values() if m.is_validator),
    )


def _pin_genesis(
    home: Home, api: NodeApi, remote: RemoteGenesis, progress: Progress | None
) -> bool:
    if ledger_exists(home_store_url(home)):
        with Ledger.open(home) as ledger:
            if ledger.genesis_hash != remote.hash:
                raise StoreError(
                    f"{home.root} already holds consortium {ledger.genesis_hash}, "
                    f"not {remote.hash}",
                    hint="a home holds one consortium; use another --home",
                )
        return False
    home.ensure()
    blobs = BlobStore(home.blob_dir)
    api.fetch_blob(remote.initial_model, blobs, max_bytes=remote.max_blob_bytes, progress=progress)
    if not blobs.verify(remote.initial_model):
        raise BlobError(f"initial model {remote.initial_model} did not arrive intact")
    Ledger.create(home, remote.block, remote.document).close()
    return True
