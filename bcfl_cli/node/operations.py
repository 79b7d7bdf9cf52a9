"""What the commands around a node do: join, members, submit, status and model export.

Each function takes a member home and a :class:`NodeApi` (a signed client for one node), does
one job and returns a plain dataclass that the CLI renders; nothing here prints. Three rules
hold throughout:

- Nothing a node says is trusted that can be checked: the genesis is re-hashed and checked
  against its document, blobs against their hashes, and the chain state a command acts on
  (pending join requests, round models) is replayed from the member's own ledger.
- Every wait is bounded and says, when it runs out, what may still happen and what to run.
- A refusal by the node is reported with the node's own one-line reason.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nacl.signing

from bcfl_cli.chain.chain import Chain
from bcfl_cli.chain.state import ChainState, JoinRequest, Member
from bcfl_cli.errors import (
    BcflError,
    BlobError,
    EncodingError,
    NodeError,
    PlanFinished,
    StoreError,
    UsageError,
    VerificationError,
)
from bcfl_cli.home import Home
from bcfl_cli.node.blob_fetch import fetch_blob, upload_blob
from bcfl_cli.node.client import DEFAULT_TIMEOUT, PeerRefused, SignedClient
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import hash_object, is_hash_hex, parse_json
from bcfl_cli.protocol.tx import ROLES, Transaction, TxKind, make_tx
from bcfl_cli.provenance.build import build_proof
from bcfl_cli.provenance.card import card_markdown
from bcfl_cli.provenance.verify import verify_model
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger

API_PREFIX = "/v1"
NODE_FILE = "node.json"
UPDATES_DIR = "updates"
DEFAULT_WAIT_S = 60.0
PUSH_TIMEOUT_S = 10.0
MAX_PUSH_PEERS = 64
POLL_S = 0.25
_UPDATE_NAME = re.compile(r"^round-([0-9]{1,12})\.safetensors$")

Progress = Callable[[int, int], None]


# --- where the member's node is ------------------------------------------------------------
def node_url(home: Home, explicit: str | None = None) -> str:
    """The node to talk to: ``--node URL``, else the one ``bcfl node`` recorded in the home.

    ``bcfl node`` writes ``HOME/node/node.json`` with its ``listen`` address (HOST:PORT) and its
    ``url``. The listen address comes first: commands run on the node's machine, and going
    straight to it avoids a round trip through a TLS proxy; a wildcard is reached on loopback.
    """
    if explicit:
        return _normalise_url(explicit)
    path = home.node_dir / NODE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise NodeError(
            f"no node recorded in {path}",
            hint="start this member's node with `bcfl node`, or pass --node URL",
        ) from None
    except (OSError, ValueError) as exc:
        raise NodeError(f"{path} is unreadable: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("listen"), str):
        host, _, port = data["listen"].rpartition(":")
        if host in ("", "0.0.0.0", "::", "[::]"):  # noqa: S104 - reading, not binding
            host = "127.0.0.1"
        return _normalise_url(f"http://{host}:{port}")
    if isinstance(data, dict) and isinstance(data.get("url"), str):
        return _normalise_url(data["url"])
    raise NodeError(f"{path} names no url or listen address", hint="restart `bcfl node`")


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = f"http://{url}"
    if not url.startswith(("http://", "https://")):
        raise UsageError(f"node URL {url!r}: expected http://HOST:PORT or https://HOST")
    return url.removesuffix(API_PREFIX)


# --- talking to a node -----------------------------------------------------------------------
@dataclass(frozen=True)
class TxStatus:
    hash: str
    status: str  # committed | pending | rejected | unknown
    height: int | None = None
    reason: str = ""


class NodeApi:
    """The node's /v1 API through one signed, pooled client.

    Without a member key (``bcfl status``, ``bcfl model export`` need no passphrase) requests
    are signed with a throwaway key: public reads accept any valid signature, and one client
    keeps one way of handling refusals, retries and response limits.
    """

    def __init__(
        self,
        url: str,
        key: nacl.signing.SigningKey | None = None,
        *,
        transport: httpx.BaseTransport | None = None,
        timeout: float | httpx.Timeout = DEFAULT_TIMEOUT,
        retries: int = 2,
    ) -> None:
        self.url = _normalise_url(url)
        self.client = SignedClient(
            key if key is not None else nacl.signing.SigningKey.generate(),
            self.url + API_PREFIX,
            transport=transport,
            timeout=timeout,
            retries=retries,
        )

    def __enter__(self) -> NodeApi:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.client.close()

    def _json(self, response: httpx.Response, *, strict: bool) -> Any:
        """Strict parsing (no floats, no duplicate keys) for what gets hashed or signed."""
        try:
            return parse_json(response.content) if strict else json.loads(response.content)
        except (EncodingError, ValueError) as exc:
            message = exc.message if isinstance(exc, EncodingError) else str(exc)
            raise NodeError(f"{response.request.url}: malformed JSON answer: {message}") from exc

    def get(self, path: str, *, strict: bool = True, **params: str | int) -> Any:
        return self._json(self.client.get(path, params=params or None), strict=strict)

    def status(self) -> dict[str, Any]:
        data = self.get("/status", strict=False)
        if not isinstance(data, dict):
            raise NodeError(f"{self.url}/v1/status: expected a JSON object")
        return data

    def genesis(self) -> tuple[Block, dict[str, Any]]:
        data = self.get("/genesis")
        if not isinstance(data, dict) or not {"block", "document"} <= set(data):
            raise NodeError(f"{self.url}/v1/genesis: expected an object {{block, document}}")
        try:
            block = Block.from_dict(data["block"])
        except EncodingError as exc:
            raise NodeError(f"{self.url} serves a malformed genesis block: {exc.message}") from exc
        if not isinstance(data["document"], dict):
            raise NodeError(f"{self.url} serves a genesis document that is not an object")
        return block, data["document"]

    def block(self, height: int) -> Block | None:
        data = self.get("/blocks", start=height, limit=1)
        blocks = data.get("blocks") if isinstance(data, dict) else None
        if not isinstance(blocks, list):
            raise NodeError(f"{self.url}/v1/blocks: expected an object {{blocks: [...]}}")
        if not blocks:
            return None
        try:
            block = Block.from_dict(blocks[0])
        except EncodingError as exc:
            raise NodeError(f"{self.url} serves a malformed block: {exc.message}") from exc
        if block.height != height:
            raise NodeError(f"{self.url}: asked for block {height}, got {block.height}")
        return block

    def submit_tx(self, tx: Transaction, *, path: str = "/txs") -> str:
        data = self._json(self.client.post(path, json_body={"tx": tx.to_dict()}), strict=False)
        got = data.get("hash") if isinstance(data, dict) else None
        if got is not None and got != tx.hash:
            raise NodeError(f"{self.url} acknowledged {got} for transaction {tx.hash}")
        return tx.hash

    def tx_status(self, tx_hash: str) -> TxStatus:
        response = self.client.get(f"/txs/{tx_hash}", allow=(404,))
        if response.status_code == 404:
            return TxStatus(tx_hash, "unknown")
        data = self._json(response, strict=False)
        if not isinstance(data, dict):
            raise NodeError(f"{self.url}/v1/txs: expected a JSON object")
        height = data.get("height")
        return TxStatus(
            tx_hash,
            str(data.get("status", "unknown")),
            height if isinstance(height, int) else None,
            str(data.get("reason") or ""),
        )

    def wait_for_tx(self, tx_hash: str, timeout_s: float = DEFAULT_WAIT_S) -> TxStatus:
        """Poll until the transaction is committed or refused, at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.tx_status(tx_hash)
            if status.status in ("committed", "rejected"):
                return status
            if time.monotonic() >= deadline:
                raise NodeError(
                    f"transaction {tx_hash[:16]} is still {status.status} after {timeout_s:g} s",
                    hint="it may still be committed; check with `bcfl status` or wait longer "
                    "(--timeout)",
                )
            time.sleep(POLL_S)

    def fetch_blob(
        self, digest: str, store: BlobStore, *, max_bytes: int, progress: Progress | None = None
    ) -> None:
        fetch_blob(self.client, digest, store, max_bytes=max_bytes, progress=progress)

    def upload_blob(self, digest: str, store: BlobStore, *, progress: Progress | None) -> None:
        upload_blob(self.client, digest, store, progress=progress)


# --- the member's chain state ----------------------------------------------------------------
def replay_state(ledger: Ledger) -> ChainState:
    """The application state at the ledger's head, replayed from its genesis.

    Signatures are not re-checked: every block in a member's store was verified when its node
    appended it (``bcfl verify-chain`` re-checks everything from scratch).
    """
    return Chain(ledger).state


def local_state(home: Home) -> ChainState:
    with Chain.open(home) as chain:
        return chain.state


# --- join ------------------------------------------------------------------------------------
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
    did = _did(key)
    member = remote.state.member(did)
    if member is not None:
        raise UsageError(
            f"{did} is already a member of {remote.consortium} ({member.status})",
            hint="a founding member does not join: it runs `bcfl init CONSORTIUM.toml --time-ms "
            f"{remote.block.header.time} --home HOME` (the genesis time the other founders "
            "used) and compares the genesis hash",
        )
    created = _pin_genesis(home, api, remote, progress)
    body = {"name": name, "roles": sorted(roles), "power": power}
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
    if home.store_file.exists():
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


def _did(key: nacl.signing.SigningKey) -> str:
    return did_from_public_key(bytes(key.verify_key))


# --- members --------------------------------------------------------------------------------
@dataclass(frozen=True)
class MemberRow:
    did: str
    name: str
    roles: list[str]
    power: int
    status: str
    since: int
    removal_approvals: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PendingRow:
    did: str
    name: str
    roles: list[str]
    power: int
    request: str
    approvals: list[str]
    expires_after: int  # the last height at which it can be approved


@dataclass(frozen=True)
class MembersView:
    height: int
    admission_approvals: int
    removal_approvals: int
    members: list[MemberRow]
    pending: list[PendingRow]

    def to_json(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "admission_approvals": self.admission_approvals,
            "removal_approvals": self.removal_approvals,
            "members": [vars(m) for m in self.members],
            "pending": [vars(p) for p in self.pending],
        }


def members_view(state: ChainState) -> MembersView:
    def row(m: Member) -> MemberRow:
        asked = sorted(state.name_of(d) for d in state.removals.get(m.did, frozenset()))
        return MemberRow(m.did, m.name, list(m.roles), m.power, m.status, m.since, asked)

    def pending(r: JoinRequest) -> PendingRow:
        approvals = sorted(state.name_of(d) for d in r.approvals)
        ttl = state.config.join_request_ttl_blocks
        return PendingRow(
            r.did, r.name, list(r.roles), r.power, r.tx, approvals, r.expires_after(ttl)
        )

    return MembersView(
        height=state.height,
        admission_approvals=state.config.admission_approvals,
        removal_approvals=state.config.removal_approvals,
        members=[row(m) for m in sorted(state.members.values(), key=lambda m: (m.since, m.name))],
        pending=[pending(r) for r in sorted(state.pending.values(), key=lambda r: r.name)],
    )


@dataclass(frozen=True)
class MemberChange:
    """An approve_member or remove_member sent, and (when waited for) what it did."""

    kind: str
    tx_hash: str
    did: str
    name: str
    committed: bool
    height: int | None
    effective: bool  # the admission/removal reached its threshold
    approvals: int
    needed: int


def _find_pending(state: ChainState, who: str) -> JoinRequest:
    for request in state.pending.values():
        if who in (request.did, request.name):
            return request
    member = next((m for m in state.members.values() if who in (m.did, m.name)), None)
    if member is not None:
        raise UsageError(f"{member.name} ({member.did}) is already a member ({member.status})")
    raise UsageError(
        f"no pending join request from {who} on this member's chain (height {state.height})",
        hint="the request may not be committed yet: `bcfl members list` shows pending requests",
    )


def _find_member(state: ChainState, who: str) -> Member:
    for member in state.members.values():
        if who in (member.did, member.name) and member.active:
            return member
    raise UsageError(f"{who} is not an active member", hint="`bcfl members list` shows them")


#: Blocks a command replays from the node in memory when this home's ledger lags behind it.
MAX_CATCH_UP_BLOCKS = 10_000
UNREACHABLE_HINT = (
    "pending requests and members are read from this home's ledger, which this member's own "
    "node keeps in sync: start it (`bcfl node`), or pass --node URL of a member's running node"
)


def current_state(home: Home, api: NodeApi, *, at_least: int = 0) -> ChainState:
    """This home's state, brought up to the node's head before deciding anything on it.

    The member's own node syncs the ledger, but a command may run while it lags (or against
    another member's node with ``--node``). Blocks this home lacks are fetched from ``api`` and
    applied in memory with every rule, commit certificate and signature checked, so a node can
    add nothing the validators did not commit; the ledger itself is only written by the node.
    """
    state = local_state(home)
    try:
        status = api.status()
    except NodeError as exc:
        raise NodeError(exc.message, hint=UNREACHABLE_HINT) from exc
    if status.get("genesis") != state.chain_id:
        raise NodeError(
            f"{api.url} serves another consortium (genesis {str(status.get('genesis'))[:16]}), "
            f"this home holds {state.chain_id[:16]}",
            hint="pass --node URL of a node of this home's consortium",
        )
    head = status.get("height")
    target = max(head if isinstance(head, int) else 0, at_least)
    if target - state.height > MAX_CATCH_UP_BLOCKS:
        raise NodeError(
            f"this home's ledger is at height {state.height}, {api.url} at {target}",
            hint="start this member's node (`bcfl node`) and let it sync, then retry",
        )
    while state.height < target:
        data = api.get("/blocks", start=state.height + 1, limit=100)
        blocks = data.get("blocks") if isinstance(data, dict) else None
        if not isinstance(blocks, list) or not blocks:
            break
        for raw in blocks:
            try:
                state = state.apply(Block.from_dict(raw))
            except BcflError as exc:
                raise NodeError(
                    f"{api.url} serves a block this home cannot accept: {exc.message}"
                ) from exc
    if state.height < at_least:
        raise NodeError(
            f"{api.url} committed at height {at_least} but serves blocks only up to "
            f"{state.height}"
        )
    return state


def approve_member(
    home: Home,
    key: nacl.signing.SigningKey,
    api: NodeApi,
    who: str,
    *,
    wait_s: float | None = DEFAULT_WAIT_S,
) -> MemberChange:
    """Sign and submit this validator's approval of ``who``'s pending join request."""
    state = current_state(home, api)
    request = _find_pending(state, who)
    if _did(key) in request.approvals:
        raise UsageError(f"you already approved {request.name}")
    body = {"member": request.did, "request": request.tx}
    tx = make_tx(key, state.chain_id, TxKind.APPROVE_MEMBER, body)
    return _send_change(home, api, tx, request.did, request.name, wait_s, admission=True)


def remove_member(
    home: Home,
    key: nacl.signing.SigningKey,
    api: NodeApi,
    who: str,
    *,
    reason: str = "",
    wait_s: float | None = DEFAULT_WAIT_S,
) -> MemberChange:
    """Sign and submit this validator's request to remove ``who``."""
    state = current_state(home, api)
    member = _find_member(state, who)
    if _did(key) in state.removals.get(member.did, frozenset()):
        raise UsageError(f"you already asked to remove {member.name}")
    tx = make_tx(
        key, state.chain_id, TxKind.REMOVE_MEMBER, {"member": member.did, "reason": reason}
    )
    return _send_change(home, api, tx, member.did, member.name, wait_s, admission=False)


def _send_change(
    home: Home,
    api: NodeApi,
    tx: Transaction,
    did: str,
    name: str,
    wait_s: float | None,
    *,
    admission: bool,
) -> MemberChange:
    api.submit_tx(tx)
    kind = str(tx.kind)
    if wait_s is None:
        return MemberChange(kind, tx.hash, did, name, False, None, False, 0, 0)
    status = api.wait_for_tx(tx.hash, wait_s)
    if status.status == "rejected":
        raise NodeError(f"the node dropped the {kind}: {status.reason or 'no reason given'}")
    state = current_state(home, api, at_least=status.height or 0)
    config = state.config
    if admission:
        needed = config.admission_approvals
        request = state.pending.get(did)
        effective = request is None and did in state.members
        approvals = needed if effective else len(request.approvals if request else ())
    else:
        needed = config.removal_approvals
        member = state.member(did)
        effective = member is not None and not member.active
        approvals = needed if effective else len(state.removals.get(did, frozenset()))
    return MemberChange(kind, tx.hash, did, name, True, status.height, effective, approvals, needed)


# --- submit ---------------------------------------------------------------------------------
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
    plan = api.status().get("plan")
    if isinstance(plan, dict) and plan.get("finished") is True:
        rounds = plan.get("rounds")
        raise PlanFinished(rounds if isinstance(rounds, int) else 0)


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
    except PeerRefused as exc:
        if 400 <= exc.status < 500 and exc.status not in (401, 403, 413, 429):
            return outcome(False, exc.code, exc.message)
        raise
    status = api.wait_for_tx(tx.hash, wait_s)
    if status.status == "rejected":
        return outcome(False, status.reason or "rejected", "dropped before commit")
    assert status.height is not None
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
    Returns ``"URL: why"`` for each peer that could not be reached.
    """
    peers = api.status().get("peers") or []
    urls = [str(p["url"]) for p in peers if isinstance(p, dict) and isinstance(p.get("url"), str)]
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


# --- status ---------------------------------------------------------------------------------
def node_status(api: NodeApi) -> dict[str, Any]:
    """The node's /v1/status, as it says it (rendered by the CLI; checked nowhere)."""
    return api.status()


def local_status(home: Home, did: str | None = None) -> dict[str, Any]:
    """What this home's own ledger says, shaped like /v1/status, for when its node is down.

    ``offline`` is true and there are no peers; a safety alarm the node recorded before it
    stopped (HOME/node/alarm.json) is reported, since an alarm is often why a node is down.
    """
    with Chain.open(home) as chain:
        state, alarm = chain.state, chain.alarm
    rnd = state.round
    member = state.member(did) if did else None
    role = "observer"
    if member is not None and member.active:
        role = "validator" if member.is_validator else "member"
    return {
        "offline": True,
        "genesis": state.chain_id,
        "consortium": state.config.name,
        "height": state.height,
        "head": state.head_hash,
        "head_time": state.head_time,
        "round": {
            "number": rnd.number,
            "state": rnd.state,
            "base_model": rnd.base_model,
            "model": rnd.model,
            "deadline_height": rnd.deadline_height,
            "deadline_time": rnd.deadline_time or None,
            "updates": rnd.accepted_hashes,
            "submitted": len(rnd.submitted),
        },
        "rounds_planned": state.config.training.rounds,
        "plan": state.plan_progress(),
        "peers": [],
        "members": [
            {
                "did": m.did,
                "name": m.name,
                "roles": list(m.roles),
                "power": m.power,
                "status": m.status,
            }
            for m in sorted(state.members.values(), key=lambda m: (m.since, m.name))
        ],
        "pending_members": sorted(state.pending),
        "me": {"did": did, "name": member.name if member else None, "role": role},
        "alarm": alarm,
    }


# --- model export ----------------------------------------------------------------------------
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


__all__ = [
    "ExportOutcome",
    "JoinOutcome",
    "MemberChange",
    "MembersView",
    "NodeApi",
    "RemoteGenesis",
    "SubmitOutcome",
    "TxStatus",
    "UpdateFile",
    "approve_member",
    "build_update_tx",
    "check_pinned_hash",
    "export_model",
    "fetch_genesis",
    "find_verdict",
    "join_consortium",
    "latest_update",
    "local_state",
    "local_status",
    "members_view",
    "node_status",
    "node_url",
    "parse_roles",
    "push_to_peers",
    "read_update",
    "remove_member",
    "replay_state",
    "round_models",
    "submit_update",
    "updates_dir",
]
