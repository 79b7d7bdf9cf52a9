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
    updates: list[str]
    submitted: int


class PeerView(_Body):
    url: str
    did: str | None
    height: int | None
    head: str | None
    last_seen: int | None
    error: str | None


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


class StatusResponse(_Body):
    genesis: str
    consortium: str
    height: int
    head: str
    head_time: int
    round: RoundView
    rounds_planned: int
    peers: list[PeerView]
    members: list[MemberView]
    pending_members: list[str]
    me: MeView
    mempool: int
    consensus: dict[str, int | str]
    alarm: AlarmView | None


class GenesisResponse(_Body):
    block: dict[str, Any]
    document: dict[str, Any]


class BlocksResponse(_Body):
    blocks: list[dict[str, Any]] = Field(max_length=100)


class ConsensusLog(_Body):
    height: int
    proposals: list[dict[str, Any]]
    votes: list[dict[str, Any]]


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M], raw: bytes, *, max_bytes: int) -> M:
    """``raw`` as ``model``: EncodingError with a one-line reason for anything malformed."""
    data = parse_json(raw, max_bytes=max_bytes)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        raise EncodingError(f"{where}: {first.get('msg', 'invalid')}") from exc
