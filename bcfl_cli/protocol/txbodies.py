"""Transaction kinds and their bodies (docs/PROTOCOL.md §5): the schema each body must meet,
and one frozen value per kind, parsed once from the signed body.

The wire form stays the dict that is hashed and signed (``tx.py``); these values are what the
chain rules read, so that a misspelt field is a type error instead of a ``KeyError`` on a
peer's block. ``parse_body`` checks the body against its kind's schema first (an
``EncodingError`` for a bad one), and ``to_json`` gives back exactly that dict: same keys, same
values, hence the same canonical bytes and hash. ``Transaction.from_dict`` parses every
transaction that comes from outside, once, and keeps the value (``Transaction.parsed_body``).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, assert_never

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.crypto import is_did
from bcfl_cli.protocol.encoding import is_hash_hex

_DECIMAL = re.compile(
    r"^-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?\Z|^(nan|inf|-inf)\Z"
)
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
ROLES = ("trainer", "validator")


class TxKind(enum.StrEnum):
    JOIN_REQUEST = "join_request"
    APPROVE_MEMBER = "approve_member"
    REMOVE_MEMBER = "remove_member"
    OPEN_ROUND = "open_round"
    UPDATE = "update"
    VALIDATION = "validation"
    AGGREGATE = "aggregate"
    MISBEHAVIOUR = "misbehaviour"
    TLS_CERTIFICATE = "tls_certificate"  # a member pins (rotates) its node certificate
    TLS_MODE = "tls_mode"  # a validator asks the consortium to trust certificates another way


# --- body schemas -------------------------------------------------------------------------
Check = Callable[[Any], bool]


def _int(lo: int, hi: int) -> Check:
    return lambda v: isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _str(lo: int, hi: int) -> Check:
    return lambda v: isinstance(v, str) and lo <= len(v) <= hi and v.isprintable()


def _roles(v: Any) -> bool:
    return (
        isinstance(v, list)
        and 1 <= len(v) <= len(ROLES)
        and all(r in ROLES for r in v)
        and v == sorted(set(v))
    )


def _metrics(v: Any) -> bool:
    if not isinstance(v, dict) or len(v) > 32:
        return False
    for k, x in v.items():  # a loop, not all(genexpr): every update carries metrics
        if not (isinstance(k, str) and _CODE.match(k) and isinstance(x, str) and _DECIMAL.match(x)):
            return False
    return True


def _params(v: Any) -> bool:
    return (
        isinstance(v, dict)
        and len(v) <= 32
        and all(
            isinstance(k, str)
            and _CODE.match(k)
            and (
                (isinstance(x, str) and len(x) <= 64)
                or (isinstance(x, int) and not isinstance(x, bool) and abs(x) <= _U64)
            )
            for k, x in v.items()
        )
    )


def _hash_list(max_len: int) -> Check:
    return lambda v: (
        isinstance(v, list)
        and len(v) <= max_len
        and all(is_hash_hex(h) for h in v)
        and len(set(v)) == len(v)
    )


def _votes(v: Any) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(isinstance(x, dict) for x in v)


_U64 = 2**53 - 1
BODY_SCHEMAS: Mapping[TxKind, Mapping[str, Check]] = {
    TxKind.JOIN_REQUEST: {"name": _str(1, 64), "roles": _roles, "power": _int(0, 1_000_000)},
    TxKind.APPROVE_MEMBER: {"member": is_did, "request": is_hash_hex},
    TxKind.REMOVE_MEMBER: {"member": is_did, "reason": _str(0, 256)},
    TxKind.OPEN_ROUND: {
        "round": _int(1, _U64),
        "base_model": is_hash_hex,
        "deadline_height": _int(0, _U64),
    },
    TxKind.UPDATE: {
        "round": _int(1, _U64),
        "base_model": is_hash_hex,
        "blob": is_hash_hex,
        "blob_size": _int(1, _U64),
        "num_samples": _int(1, _U64),
        "metrics": _metrics,
    },
    TxKind.VALIDATION: {
        "update": is_hash_hex,
        "verdict": lambda v: v in ("accept", "reject"),
        "reason": lambda v: isinstance(v, str) and _CODE.match(v) is not None,
        "detail": _str(0, 512),
    },
    TxKind.AGGREGATE: {
        "round": _int(1, _U64),
        "updates": _hash_list(10_000),
        "rule": lambda v: isinstance(v, str) and _CODE.match(v) is not None,
        "params": _params,
        "model": is_hash_hex,
        "model_size": _int(1, _U64),
    },
    TxKind.MISBEHAVIOUR: {"offender": is_did, "votes": _votes},
    TxKind.TLS_CERTIFICATE: {"fingerprint": is_hash_hex},
    TxKind.TLS_MODE: {"mode": lambda v: v in ("pinned", "ca")},
}


#: Fields a body may leave out (PROTOCOL.md §5): ``open_round`` carries ``deadline_time`` (ms)
#: exactly when the genesis's training plan has a deadline in seconds (§6.3).
OPTIONAL_BODY_FIELDS: Mapping[TxKind, Mapping[str, Check]] = {
    TxKind.OPEN_ROUND: {"deadline_time": _int(1, _U64)},
    # the SHA-256 fingerprint of the applicant's node certificate (issue 22, pinned mode)
    TxKind.JOIN_REQUEST: {"tls": is_hash_hex},
}
_BODY_FIELDS = {kind: frozenset(schema) for kind, schema in BODY_SCHEMAS.items()}


#: Each kind's checks, required then optional fields, merged once (every body read is checked).
_SCHEMAS = {
    kind: {**schema, **OPTIONAL_BODY_FIELDS.get(kind, {})} for kind, schema in BODY_SCHEMAS.items()
}


def validate_body(kind: TxKind, body: Any) -> None:
    optional = OPTIONAL_BODY_FIELDS.get(kind, {})
    schema = _SCHEMAS[kind]
    if not isinstance(body, dict):
        raise EncodingError(f"{kind} body must be an object")
    if body.keys() - optional.keys() != _BODY_FIELDS[kind]:
        missing = sorted(_BODY_FIELDS[kind] - set(body))
        extra = sorted(set(body) - set(schema))
        raise EncodingError(f"{kind} body fields wrong: missing {missing}, unexpected {extra}")
    for field, check in schema.items():
        if field in body and not check(body[field]):
            raise EncodingError(f"{kind} body field {field!r} has an invalid value")


# --- typed bodies ---------------------------------------------------------------------------
@dataclass(frozen=True)
class JoinRequestBody:
    KIND: ClassVar[TxKind] = TxKind.JOIN_REQUEST
    name: str
    roles: tuple[str, ...]
    power: int
    tls: str | None = None  # the applicant's certificate fingerprint, pinned on admission

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"name": self.name, "roles": list(self.roles), "power": self.power}
        if self.tls is not None:
            body["tls"] = self.tls
        return body


@dataclass(frozen=True)
class ApproveMemberBody:
    KIND: ClassVar[TxKind] = TxKind.APPROVE_MEMBER
    member: str
    request: str

    def to_json(self) -> dict[str, Any]:
        return {"member": self.member, "request": self.request}


@dataclass(frozen=True)
class RemoveMemberBody:
    KIND: ClassVar[TxKind] = TxKind.REMOVE_MEMBER
    member: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"member": self.member, "reason": self.reason}


@dataclass(frozen=True)
class OpenRoundBody:
    KIND: ClassVar[TxKind] = TxKind.OPEN_ROUND
    round: int
    base_model: str
    deadline_height: int
    deadline_time: int | None = None  # left out of the body when the plan has none in seconds

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "round": self.round,
            "base_model": self.base_model,
            "deadline_height": self.deadline_height,
        }
        if self.deadline_time is not None:
            body["deadline_time"] = self.deadline_time
        return body


@dataclass(frozen=True)
class UpdateBody:
    KIND: ClassVar[TxKind] = TxKind.UPDATE
    round: int
    base_model: str
    blob: str
    blob_size: int
    num_samples: int
    metrics: Mapping[str, str]

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "base_model": self.base_model,
            "blob": self.blob,
            "blob_size": self.blob_size,
            "num_samples": self.num_samples,
            "metrics": dict(self.metrics),
        }


@dataclass(frozen=True)
class ValidationBody:
    KIND: ClassVar[TxKind] = TxKind.VALIDATION
    update: str
    verdict: Literal["accept", "reject"]
    reason: str
    detail: str

    @property
    def accept(self) -> bool:
        return self.verdict == "accept"

    def to_json(self) -> dict[str, Any]:
        return {
            "update": self.update,
            "verdict": self.verdict,
            "reason": self.reason,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class AggregateBody:
    KIND: ClassVar[TxKind] = TxKind.AGGREGATE
    round: int
    updates: tuple[str, ...]
    rule: str
    params: Mapping[str, str | int]
    model: str
    model_size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "updates": list(self.updates),
            "rule": self.rule,
            "params": dict(self.params),
            "model": self.model,
            "model_size": self.model_size,
        }


@dataclass(frozen=True)
class MisbehaviourBody:
    """Two votes as they were signed: parsing them is the evidence rule's job (``bad_evidence``
    names a malformed vote), not the body's."""

    KIND: ClassVar[TxKind] = TxKind.MISBEHAVIOUR
    offender: str
    votes: tuple[Mapping[str, Any], Mapping[str, Any]]

    def to_json(self) -> dict[str, Any]:
        return {"offender": self.offender, "votes": [dict(v) for v in self.votes]}


@dataclass(frozen=True)
class TlsCertificateBody:
    """A member pins a new node certificate (a rotation, issue 22)."""

    KIND: ClassVar[TxKind] = TxKind.TLS_CERTIFICATE
    fingerprint: str

    def to_json(self) -> dict[str, Any]:
        return {"fingerprint": self.fingerprint}


@dataclass(frozen=True)
class TlsModeBody:
    """A validator's vote to change how nodes trust each other's certificates (issue 22)."""

    KIND: ClassVar[TxKind] = TxKind.TLS_MODE
    mode: Literal["pinned", "ca"]

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode}


TxBody = (
    JoinRequestBody
    | ApproveMemberBody
    | RemoveMemberBody
    | OpenRoundBody
    | UpdateBody
    | ValidationBody
    | AggregateBody
    | MisbehaviourBody
    | TlsCertificateBody
    | TlsModeBody
)


def parse_body(kind: TxKind, body: Any) -> TxBody:
    """The typed body of a ``kind`` transaction; EncodingError when ``body`` breaks its schema."""
    validate_body(kind, body)
    match kind:
        case TxKind.JOIN_REQUEST:
            return JoinRequestBody(
                body["name"], tuple(body["roles"]), body["power"], body.get("tls")
            )
        case TxKind.APPROVE_MEMBER:
            return ApproveMemberBody(body["member"], body["request"])
        case TxKind.REMOVE_MEMBER:
            return RemoveMemberBody(body["member"], body["reason"])
        case TxKind.OPEN_ROUND:
            return OpenRoundBody(
                body["round"],
                body["base_model"],
                body["deadline_height"],
                body.get("deadline_time"),
            )
        case TxKind.UPDATE:
            return UpdateBody(
                body["round"],
                body["base_model"],
                body["blob"],
                body["blob_size"],
                body["num_samples"],
                MappingProxyType(dict(body["metrics"])),
            )
        case TxKind.VALIDATION:
            return ValidationBody(body["update"], body["verdict"], body["reason"], body["detail"])
        case TxKind.AGGREGATE:
            return AggregateBody(
                body["round"],
                tuple(body["updates"]),
                body["rule"],
                MappingProxyType(dict(body["params"])),
                body["model"],
                body["model_size"],
            )
        case TxKind.MISBEHAVIOUR:
            first, second = body["votes"]
            return MisbehaviourBody(
                body["offender"], (MappingProxyType(first), MappingProxyType(second))
            )
        case TxKind.TLS_CERTIFICATE:
            return TlsCertificateBody(body["fingerprint"])
        case TxKind.TLS_MODE:
            return TlsModeBody(body["mode"])
    assert_never(kind)
