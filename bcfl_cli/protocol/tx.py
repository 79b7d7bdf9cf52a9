"""Signed transactions (docs/PROTOCOL.md §3).

A transaction is ``{"tx": UNSIGNED, "sig": HEX}``. Its hash is SHA-256 of the canonical form of
UNSIGNED; the author signs that hash under ``Domain.TX``. ``chain`` binds it to one consortium
(the genesis hash) and the random ``nonce`` makes two otherwise equal transactions distinct; a
transaction hash may appear at most once on a chain, which is the replay protection.
"""

from __future__ import annotations

import functools
import re
import secrets
import time
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
    is_version,
    parse_canonical,
    sha256_hex,
)
from bcfl_cli.protocol.txbodies import ROLES as ROLES
from bcfl_cli.protocol.txbodies import TxBody, parse_body
from bcfl_cli.protocol.txbodies import TxKind as TxKind
from bcfl_cli.protocol.txbodies import validate_body as validate_body
from bcfl_cli.protocol.txwire import decode_stored

PROTOCOL_VERSION = 1
MAX_TX_BYTES = 64 * 1024
#: The signed form is ``{"sig":"<128 hex>","tx":UNSIGNED}``: UNSIGNED starts at byte 143 and
#: 144 bytes surround it.
_UNSIGNED_START = len('{"sig":"') + 128 + len('","tx":')
SIGNED_OVERHEAD = _UNSIGNED_START + 1
_NONCE = re.compile(r"^[0-9a-f]{32}\Z")
_SIGNED_FIELDS = frozenset({"tx", "sig"})
_TX_FIELDS = frozenset({"v", "chain", "kind", "author", "nonce", "time", "body"})
_KINDS = {str(kind): kind for kind in TxKind}
_MAX_TIME = 2**53 - 1


def _is_time(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _MAX_TIME


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

    def signed_text(self) -> str:
        """The canonical JSON of the signed form (``to_dict``), as the ledger stores it.

        Kept with the object, like the digest: in ``bcfl simulate`` every member appends the
        same transaction objects to its own store, and encoding each again per member was N x N
        encodings a round (16% of its CPU at 100 members). Frozen object, body never changed.
        """
        known: str | None = self.__dict__.get("_signed_text")
        if known is None:
            known = canonical(self.to_dict()).decode("utf-8")
            object.__setattr__(self, "_signed_text", known)
        return known

    @property
    def parsed_body(self) -> TxBody:
        """The body as its kind's frozen value (``txbodies.py``), what the chain rules read.

        Parsed by ``from_dict`` (every transaction from outside comes through it) and kept with
        the object, like the digest; one built in code is parsed on first use, and a body that
        breaks its schema raises EncodingError here.
        """
        known: TxBody | None = self.__dict__.get("_parsed_body")
        if known is None:
            known = parse_body(self.kind, self.body)
            object.__setattr__(self, "_parsed_body", known)
        return known

    @classmethod
    def from_canonical(cls, data: str | bytes) -> Transaction:
        """A signed transaction from its canonical bytes (refusing any other spelling).

        The hash is read off those bytes, which hold UNSIGNED's canonical form verbatim, instead
        of encoding the parsed value again; it is kept with the object (which is frozen, and
        whose body nobody else holds), so it always matches its content.
        """
        raw = data.encode("utf-8") if isinstance(data, str) else data
        digest = (sha256_hex(raw[_UNSIGNED_START:-1]), len(raw))
        fast = decode_stored(raw)  # None: the exact path below decides, with its messages
        if fast is None:
            tx = cls.from_dict(parse_canonical(data))
            object.__setattr__(tx, "_digest", digest)
            return tx
        # What ``cls(...)`` and three ``object.__setattr__`` calls would leave, in one dict
        # update: the frozen ``__init__`` only sets the fields (verify-chain builds one a row).
        tx = object.__new__(cls)
        chain, kind, author, nonce, time_ms, body, signature, parsed = fast
        tx.__dict__.update(
            chain=chain,
            kind=kind,
            author=author,
            nonce=nonce,
            time=time_ms,
            body=body,
            signature=signature,
            _parsed_body=parsed,
            _digest=digest,
        )
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
        if not is_version(tx["v"], PROTOCOL_VERSION):
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
        if not _is_time(tx["time"]):
            raise EncodingError("transaction time must be integer milliseconds")
        if not is_signature_hex(sig):
            raise EncodingError("transaction signature must be 128 lowercase hex digits")
        parsed = parse_body(kind, tx["body"])  # the body's schema, checked once, kept typed
        signed = cls(tx["chain"], kind, tx["author"], tx["nonce"], tx["time"], tx["body"], sig)
        object.__setattr__(signed, "_parsed_body", parsed)
        return signed


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
