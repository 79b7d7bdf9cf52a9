"""Request and response bodies of the node's HTTP API (pydantic, unknown fields refused).

Bodies are parsed with ``parse_json`` first (duplicate keys, floats and over-deep documents are
refused there: two parsers must never read different values from the same signed bytes) and
then validated here. Protocol objects (transactions, blocks, votes, proposals) travel as plain
JSON objects and are checked by their own ``from_dict``; these models only fix the envelope.
"""

from __future__ import annotations

from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.encoding import parse_json


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- requests -----------------------------------------------------------------------------
class SubmitTx(_Body):
    """``POST /v1/txs`` and ``POST /v1/join``: one signed transaction ``{"tx", "sig"}``."""

    tx: dict[str, Any]


#: A blob this small travels with its update transaction (``POST /v1/updates``) or in one
#: chunk; larger ones use the resumable chunked upload.
MAX_INLINE_BLOB_BYTES = 1024 * 1024


class SubmitUpdate(_Body):
    """``POST /v1/updates``: a signed ``update`` transaction and the blob it names (base64)."""

    tx: dict[str, Any]
    blob: str = Field(max_length=4 * -(-MAX_INLINE_BLOB_BYTES // 3))


class StreamUpdate(_Body):
    """A frame of the peer stream: an update with its blob, as ``POST /v1/updates`` takes it,
    and the members known to hold it already (as the ``Bcfl-Seen-By`` header names them)."""

    update: SubmitUpdate
    seen: str | None = Field(default=None, max_length=128 * 13)


class ConsensusMessage(_Body):
    """``POST /v1/consensus``: exactly one of a signed proposal or a signed vote."""

    proposal: dict[str, Any] | None = None
    vote: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ConsensusMessage:
        if (self.proposal is None) == (self.vote is None):
            raise ValueError("send exactly one of proposal or vote")
        return self


# --- responses ----------------------------------------------------------------------------
class ErrorBody(_Body):
    error: str
    message: str


class TxAccepted(_Body):
    hash: str
    status: Literal["pending", "committed"]


class TxStatus(_Body):
    tx: dict[str, Any] | None
    height: int | None
    status: Literal["committed", "pending", "rejected", "unknown"]
    reason: str


class RoundView(_Body):
    number: int
    state: Literal["open", "closed"]
    base_model: str
    model: str
    deadline_height: int
    #: ms of block time; None when the plan has no deadline in seconds
    deadline_time: int | None = None
    updates: list[str]
    submitted: int


class PlanView(_Body):
    """The training plan: finished once its last round's aggregate is committed."""

    rounds: int
    finished: bool
    finished_height: int | None
    finished_time: int | None


class PeerView(_Body):
    url: str
    did: str | None
    height: int | None
    head: str | None
    last_seen: int | None
    error: str | None
    #: messages (votes, proposals, updates) sent to this peer on its stream, and whether it is open
    streamed: int = 0
    stream_open: bool = False
    #: the link (issue 22): encrypted or not, how the peer's certificate was verified
    #: (``none``, ``ca`` or ``pinned:<did>``), and the last TLS refusal with its reason
    encrypted: bool = False
    verified: str = "none"
    tls_refused: str | None = None


class MemberView(_Body):
    did: str
    name: str
    roles: list[str]
    power: int
    status: str


class MeView(_Body):
    did: str
    name: str | None
    role: Literal["validator", "member", "observer"]


class AlarmView(_Body):
    height: int
    blocks: list[str]
    message: str


class RoundTrafficView(_Body):
    round: int
    sent: int
    received: int


class TrafficView(_Body):
    """Blob bytes a node sent and received (node/traffic.py): in all, and for its last rounds."""

    sent: int
    received: int
    rounds: list[RoundTrafficView]


class StatusResponse(_Body):
    genesis: str
    consortium: str
    height: int
    head: str
    head_time: int
    round: RoundView
    rounds_planned: int
    plan: PlanView | None = None
    peers: list[PeerView]
    members: list[MemberView]
    pending_members: list[str]
    me: MeView
    mempool: int
    consensus: dict[str, int | str]
    alarm: AlarmView | None
    #: this node's transport: the genesis's trust mode, whether it serves TLS, its fingerprint
    tls: dict[str, str | bool | None] | None = None
    #: blob bytes this node moved, per round (issue 19: bytes per member)
    traffic: TrafficView | None = None
    #: rounds whose aggregate this node took on the validators' commit without recomputing it
    #: (a member that trains but does not validate, without --verify-updates)
    unverified_rounds: list[int] | None = None


class GenesisResponse(_Body):
    block: dict[str, Any]
    document: dict[str, Any]


class BlocksResponse(_Body):
    blocks: list[dict[str, Any]] = Field(max_length=100)


#: Rounds in one GET /v1/rounds answer (the explorer's rounds view).
MAX_ROUNDS_PER_RESPONSE = 100


class UpdateSummaryView(_Body):
    tx: str
    author: str
    name: str
    height: int
    num_samples: int
    eval_accuracy: str | None
    verdict: str | None
    reason: str
    detail: str
    included: bool


class RoundSummaryView(_Body):
    number: int
    state: Literal["open", "closed"]
    opened_at: int
    open_tx: str
    base_model: str
    deadline_height: int
    deadline_time: int | None
    closed_at: int | None
    aggregate_tx: str | None
    model: str | None
    rule: str | None
    mean_eval_accuracy: str | None
    accepted: int
    rejected: int
    updates: list[UpdateSummaryView]


class RoundsResponse(_Body):
    """Rounds as the committed blocks tell them (the explorer's rounds view)."""

    height: int
    latest: int
    rounds_planned: int
    rounds: list[RoundSummaryView] = Field(max_length=MAX_ROUNDS_PER_RESPONSE)


class BlockResponse(_Body):
    """One decided block, with its hash and each transaction's hash and kind."""

    hash: str
    block: dict[str, Any]
    tx_hashes: list[str]
    tx_kinds: list[str]


class ConsensusLog(_Body):
    height: int
    proposals: list[dict[str, Any]]
    votes: list[dict[str, Any]]


# --- path, query and header parameters (OpenAPI) ----------------------------------------------
#: Decimal numbers in paths and queries: ASCII digits only, at most this many (the handlers
#: refuse anything else with 400 before calling ``int``).
MAX_HEIGHT_DIGITS = 15
MAX_HEIGHT = 10**MAX_HEIGHT_DIGITS - 1
MAX_BLOCKS_PER_RESPONSE = 100

HASH_SCHEMA: dict[str, Any] = {
    "type": "string",
    "pattern": "^[0-9a-f]{64}$",
    "minLength": 64,
    "maxLength": 64,
}


def _param(
    name: str, where: str, schema: dict[str, Any], description: str, *, required: bool = False
) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": required or where == "path",
        "description": description,
        "schema": schema,
    }


def route_parameters(
    *, max_blob_bytes: int, chunk_size: int
) -> dict[tuple[str, str], list[dict[str, Any]]]:
    """Every path, query and header parameter of every route, with its type and bounds.

    ``max_blob_bytes`` (the genesis contract's limit) and ``chunk_size`` (this node's) bound the
    blob sizes and chunk indexes a node accepts, so the description states them exactly.
    """
    blob = _param("hash", "path", HASH_SCHEMA, "SHA-256 of the blob, 64 lowercase hex")
    size = _param(
        "size",
        "query",
        {"type": "integer", "minimum": 1, "maximum": max_blob_bytes},
        "size of the whole blob in bytes (at most the consortium's max_blob_bytes)",
        required=True,
    )
    last_chunk = max(0, -(-max_blob_bytes // chunk_size) - 1)
    index = _param(
        "index",
        "path",
        {"type": "integer", "minimum": 0, "maximum": last_chunk},
        f"chunk number, 0 .. ceil(size / {chunk_size}) - 1",
    )
    byte_range = _param(
        "Range",
        "header",
        {"type": "string", "pattern": "^bytes=[0-9]{1,19}-([0-9]{1,19})?$", "maxLength": 46},
        "one byte range, bytes=FIRST- or bytes=FIRST-LAST (206, or 416 when unsatisfiable)",
    )
    return {
        ("get", "/v1/blocks"): [
            _param(
                "start",
                "query",
                {"type": "integer", "minimum": 0, "maximum": MAX_HEIGHT, "default": 0},
                "first height",
            ),
            _param(
                "limit",
                "query",
                {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_BLOCKS_PER_RESPONSE,
                    "default": MAX_BLOCKS_PER_RESPONSE,
                },
                f"most blocks returned (a larger value counts as {MAX_BLOCKS_PER_RESPONSE})",
            ),
        ],
        ("post", "/v1/txs"): [
            _param(
                "Bcfl-Seen-By",
                "header",
                {
                    "type": "string",
                    "pattern": "^[0-9a-f]{12}( [0-9a-f]{12}){0,127}$",
                    "maxLength": 13 * 128 - 1,
                },
                "members already sent this transaction (first 12 hex of SHA-256 of each did,"
                " space-separated): it is relayed only to the others; a hint, never refused",
            )
        ],
        ("get", "/v1/txs/{hash}"): [
            _param("hash", "path", HASH_SCHEMA, "transaction hash, 64 lowercase hex")
        ],
        ("get", "/v1/consensus/{height}"): [
            _param(
                "height",
                "path",
                {"type": "integer", "minimum": 0, "maximum": MAX_HEIGHT},
                "block height",
            )
        ],
        ("get", "/v1/blocks/{height}"): [
            _param(
                "height",
                "path",
                {"type": "integer", "minimum": 0, "maximum": MAX_HEIGHT},
                "block height",
            )
        ],
        ("get", "/v1/rounds"): [
            _param(
                "start",
                "query",
                {"type": "integer", "minimum": 0, "maximum": MAX_HEIGHT, "default": 1},
                "first round",
            ),
            _param(
                "limit",
                "query",
                {
                    "type": "integer",
                    "minimum": 0,
                    "maximum": MAX_ROUNDS_PER_RESPONSE,
                    "default": MAX_ROUNDS_PER_RESPONSE,
                },
                f"most rounds returned (a larger value counts as {MAX_ROUNDS_PER_RESPONSE})",
            ),
        ],
        ("get", "/explorer/static/{name}"): [
            _param(
                "name",
                "path",
                {"type": "string", "pattern": "^explorer\\.(js|css)$", "maxLength": 12},
                "the page's script or style sheet",
            )
        ],
        ("get", "/explorer/proof/{round}"): [
            _param(
                "round",
                "path",
                {"type": "integer", "minimum": 0, "maximum": MAX_HEIGHT},
                "a closed round",
            )
        ],
        ("get", "/v1/blobs/{hash}"): [blob, byte_range],
        ("get", "/v1/blobs/{hash}/manifest"): [blob],
        ("get", "/v1/blobs/{hash}/upload"): [blob, size],
        ("put", "/v1/blobs/{hash}/chunks/{index}"): [blob, index, size],
        ("put", "/v1/blobs/{hash}"): [blob, size],
    }


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], raw: bytes, *, max_bytes: int) -> M:
    """``raw`` as ``model``: EncodingError with a one-line reason for anything malformed."""
    return validate_body(model, parse_json(raw, max_bytes=max_bytes))


def validate_body(model: type[M], data: Any) -> M:
    """Parsed JSON as ``model``: EncodingError with a one-line reason for anything malformed."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise EncodingError(f"{where}: {first.get('msg', 'invalid')}") from exc
