"""Signed transactions (docs/PROTOCOL.md §3).

A transaction is ``{"tx": UNSIGNED, "sig": HEX}``. Its hash is SHA-256 of the canonical form of
UNSIGNED; the author signs that hash under ``Domain.TX``. ``chain`` binds it to one consortium
(the genesis hash) and the random ``nonce`` makes two otherwise equal transactions distinct; a
transaction hash may appear at most once on a chain, which is the replay protection.
"""

from __future__ import annotations

import enum
import functools
import re
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import nacl.signing

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.crypto import (
    Domain,
    did_from_public_key,
    is_did,
    sign_digest,
    verify_by_did,
)
from bcfl_cli.protocol.encoding import (
    canonical,
    is_hash_hex,
    is_signature_hex,
    parse_canonical,
    sha256_hex,
)

PROTOCOL_VERSION = 1
MAX_TX_BYTES = 64 * 1024
#: The signed form is ``{"sig":"<128 hex>","tx":UNSIGNED}``: UNSIGNED starts at byte 143 and
#: 144 bytes surround it.
_UNSIGNED_START = len('{"sig":"') + 128 + len('","tx":')
SIGNED_OVERHEAD = _UNSIGNED_START + 1
_NONCE = re.compile(r"^[0-9a-f]{32}$")
_DECIMAL = re.compile(
    r"^-?(0|[1-9][0-9]{0,30})(\.[0-9]{1,30})?([eE][-+]?[0-9]{1,3})?$|^(nan|inf|-inf)$"
)
_CODE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
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
    return (
        isinstance(v, dict)
        and len(v) <= 32
        and all(
            isinstance(k, str) and _CODE.match(k) and isinstance(x, str) and _DECIMAL.match(x)
            for k, x in v.items()
        )
    )


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
}


#: Fields a body may leave out (PROTOCOL.md §5): ``open_round`` carries ``deadline_time`` (ms)
#: exactly when the genesis's training plan has a deadline in seconds (§6.3).
OPTIONAL_BODY_FIELDS: Mapping[TxKind, Mapping[str, Check]] = {
    TxKind.OPEN_ROUND: {"deadline_time": _int(1, _U64)},
    # the SHA-256 fingerprint of the applicant's node certificate (issue 22, pinned mode)
    TxKind.JOIN_REQUEST: {"tls": is_hash_hex},
}
_BODY_FIELDS = {kind: frozenset(schema) for kind, schema in BODY_SCHEMAS.items()}
_SIGNED_FIELDS = frozenset({"tx", "sig"})
_TX_FIELDS = frozenset({"v", "chain", "kind", "author", "nonce", "time", "body"})
_KINDS = {str(kind): kind for kind in TxKind}
_TIME = _int(0, _U64)


def validate_body(kind: TxKind, body: Any) -> None:
    optional = OPTIONAL_BODY_FIELDS.get(kind, {})
    schema = {**BODY_SCHEMAS[kind], **optional}
    if not isinstance(body, dict):
        raise EncodingError(f"{kind} body must be an object")
    if body.keys() - optional.keys() != _BODY_FIELDS[kind]:
        missing = sorted(_BODY_FIELDS[kind] - set(body))
        extra = sorted(set(body) - set(schema))
        raise EncodingError(f"{kind} body fields wrong: missing {missing}, unexpected {extra}")
    for field, check in schema.items():
        if field in body and not check(body[field]):
            raise EncodingError(f"{kind} body field {field!r} has an invalid value")


# --- the transaction ----------------------------------------------------------------------
@functools.lru_cache(maxsize=16384)
def tx_signature_valid(author: str, tx_hash: str, signature: str) -> bool:
    """Does ``signature`` by ``author`` sign ``tx_hash``? Remembered: a node checks one
    transaction on admission to its mempool and again in the block that carries it (and a
    peer's ``POST /v1/updates`` once more before it keeps the blob); the answer is a pure
    function of the three strings."""
    return verify_by_did(author, Domain.TX, tx_hash, signature)


@dataclass(frozen=True)
class Transaction:
    chain: str
    kind: TxKind
    author: str
    nonce: str
    time: int
    body: dict[str, Any]
    signature: str

    def unsigned(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "chain": self.chain,
            "kind": str(self.kind),
            "author": self.author,
            "nonce": self.nonce,
            "time": self.time,
            "body": self.body,
        }

    @property
    def hash(self) -> str:
        return self.digest()[0]

    def digest(self) -> tuple[str, int]:
        """(hash, size in bytes of the canonical signed form), from one canonicalisation.

        Kept with the object after the first call: a node asks a pending update's hash many
        times a round (mempool, verdict cache, block planning, the ledger), and encoding it
        again each time was ~8% of a node's CPU with 10 members. The object is frozen and its
        body is never changed after construction (nothing in bcfl does; don't), so the kept
        value always matches the content.
        """
        known: tuple[str, int] | None = self.__dict__.get("_digest")
        if known is None:
            unsigned = canonical(self.unsigned())
            known = (sha256_hex(unsigned), len(unsigned) + SIGNED_OVERHEAD)
            object.__setattr__(self, "_digest", known)
        return known

    def to_dict(self) -> dict[str, Any]:
        return {"tx": self.unsigned(), "sig": self.signature}

    @classmethod
    def from_canonical(cls, data: str | bytes) -> Transaction:
        """A signed transaction from its canonical bytes (refusing any other spelling).

        The hash is read off those bytes, which hold UNSIGNED's canonical form verbatim, instead
        of encoding the parsed value again; it is kept with the object (which is frozen, and
        whose body nobody else holds), so it always matches its content.
        """
        raw = data.encode("utf-8") if isinstance(data, str) else data
        tx = cls.from_dict(parse_canonical(data))
        object.__setattr__(tx, "_digest", (sha256_hex(raw[_UNSIGNED_START:-1]), len(raw)))
        return tx

    def signature_valid(self) -> bool:
        return tx_signature_valid(self.author, self.hash, self.signature)

    @classmethod
    def from_dict(cls, data: Any) -> Transaction:
        """Structural validation of untrusted input; signatures are checked separately."""
        if not isinstance(data, dict) or data.keys() != _SIGNED_FIELDS:
            raise EncodingError('a transaction is an object {"tx": ..., "sig": ...}')
        tx, sig = data["tx"], data["sig"]
        if not isinstance(tx, dict) or tx.keys() != _TX_FIELDS:
            raise EncodingError(f"transaction fields must be exactly {sorted(_TX_FIELDS)}")
        if tx["v"] != PROTOCOL_VERSION:
            raise EncodingError(f"unsupported transaction version {tx['v']!r}")
        if not is_hash_hex(tx["chain"]):
            raise EncodingError("transaction chain must be a genesis hash")
        kind = _KINDS.get(tx["kind"]) if isinstance(tx["kind"], str) else None
        if kind is None:
            raise EncodingError(f"unknown transaction kind {tx['kind']!r}")
        if not is_did(tx["author"]):
            raise EncodingError("transaction author must be an Ed25519 did:key")
        if not isinstance(tx["nonce"], str) or not _NONCE.match(tx["nonce"]):
            raise EncodingError("transaction nonce must be 32 lowercase hex digits")
        if not _TIME(tx["time"]):
            raise EncodingError("transaction time must be integer milliseconds")
        if not is_signature_hex(sig):
            raise EncodingError("transaction signature must be 128 lowercase hex digits")
        validate_body(kind, tx["body"])
        return cls(tx["chain"], kind, tx["author"], tx["nonce"], tx["time"], tx["body"], sig)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def make_tx(
    key: nacl.signing.SigningKey,
    chain: str,
    kind: TxKind,
    body: dict[str, Any],
    *,
    time_ms: int | None = None,
    nonce: str | None = None,
) -> Transaction:
    """Build, validate and sign a transaction with ``key``."""
    validate_body(kind, body)
    author = did_from_public_key(bytes(key.verify_key))
    unsigned = Transaction(
        chain=chain,
        kind=kind,
        author=author,
        nonce=nonce if nonce is not None else secrets.token_hex(16),
        time=time_ms if time_ms is not None else now_ms(),
        body=body,
        signature="",
    )
    sig = sign_digest(key, Domain.TX, unsigned.hash)
    signed = Transaction.from_dict({"tx": unsigned.unsigned(), "sig": sig})
    object.__setattr__(signed, "_digest", unsigned.digest())  # the signature is not hashed
    return signed
