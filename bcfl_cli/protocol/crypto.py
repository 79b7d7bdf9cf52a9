"""Ed25519 signatures under domain separation, and ``did:key`` identifiers (PROTOCOL.md §2).

A signature is always over ``DOMAIN || 0x00 || digest`` where DOMAIN names the purpose, so a
signature made for one purpose (a vote) can never be replayed as another (a transaction).
"""

from __future__ import annotations

import enum
from functools import lru_cache

import base58
import nacl.bindings
import nacl.exceptions
import nacl.signing

from bcfl_cli.errors import EncodingError
from bcfl_cli.primitives import verify_message as verify_message  # one definition (helpers)

#: multicodec varint of ``ed25519-pub`` (0xed) followed by the 32-byte key.
_ED25519_MULTICODEC = b"\xed\x01"
DID_KEY_PREFIX = "did:key:z"


class Domain(enum.Enum):
    """Signing domains; the value is the exact prefix signed."""

    TX = b"bcfl/tx/v1"
    VOTE = b"bcfl/vote/v1"
    PROPOSAL = b"bcfl/proposal/v1"
    HTTP = b"bcfl/http/v1"
    TLS_PIN = b"bcfl/tls-pin/v1"  # a member vouching for its node certificate (issue 22)


def signing_message(domain: Domain, digest_hex: str) -> bytes:
    return domain.value + b"\x00" + bytes.fromhex(digest_hex)


def sign_digest(key: nacl.signing.SigningKey, domain: Domain, digest_hex: str) -> str:
    """Sign a SHA-256 digest under ``domain``; returns the 64-byte signature as hex."""
    return bytes(key.sign(signing_message(domain, digest_hex)).signature).hex()


def verify_digest(public_key: bytes, domain: Domain, digest_hex: str, signature_hex: str) -> bool:
    """True when ``signature_hex`` is a valid Ed25519 signature of the domain-separated digest."""
    try:
        signature = bytes.fromhex(signature_hex)
        message = signing_message(domain, digest_hex)
    except ValueError:
        return False
    return verify_message(public_key, message, signature)


@lru_cache(maxsize=4096)
def did_from_public_key(public_key: bytes) -> str:
    """The ``did:key`` of an Ed25519 key; cached, as every signed request names its signer's
    (base58 in Python costs ~60 us a call)."""
    if len(public_key) != 32:
        raise EncodingError(f"an Ed25519 public key has 32 bytes, got {len(public_key)}")
    return DID_KEY_PREFIX + base58.b58encode(_ED25519_MULTICODEC + public_key).decode("ascii")


@lru_cache(maxsize=4096)
def public_key_from_did(did: str) -> bytes:
    """Decode a ``did:key`` holding an Ed25519 key; anything else is an EncodingError."""
    if not isinstance(did, str) or not did.startswith(DID_KEY_PREFIX) or len(did) > 64:
        raise EncodingError(f"not an Ed25519 did:key: {str(did)[:70]!r}")
    try:
        raw = base58.b58decode(did[len(DID_KEY_PREFIX) :])
    except ValueError as exc:
        raise EncodingError(f"did:key is not base58btc: {did!r}") from exc
    if len(raw) != 34 or raw[:2] != _ED25519_MULTICODEC:
        raise EncodingError(f"did:key does not hold an ed25519-pub key: {did!r}")
    key = raw[2:]
    if did_from_public_key(key) != did:  # refuse non-canonical base58 spellings
        raise EncodingError(f"did:key is not in canonical form: {did!r}")
    if not is_prime_order_point(key):
        raise EncodingError(
            f"did:key holds no Ed25519 public key of prime order (identity, small-order or "
            f"mixed-order point, or not on the curve): {did!r}"
        )
    return key


def is_prime_order_point(public_key: bytes) -> bool:
    """True when ``public_key`` is the canonical encoding of a curve point in the prime-order
    subgroup, other than the identity (PROTOCOL.md §2).

    libsodium's ``crypto_core_ed25519_is_valid_point`` refuses non-canonical encodings, points
    off the curve, the eight small-order points and every point outside the main subgroup
    (A + T, with T of order 2, 4 or 8). Such keys break the one-key-one-signer assumption: a
    signature made with A's secret verifies under A + T for some messages (8 of 64 measured),
    and the identity or a small-order key lets anyone forge for some messages. A test pins
    the verdict on each kind, so a library upgrade cannot change it unnoticed.
    """
    return len(public_key) == 32 and bool(
        nacl.bindings.crypto_core_ed25519_is_valid_point(public_key)
    )


def is_did(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        public_key_from_did(str(value))
    except EncodingError:
        return False
    return True


def verify_by_did(did: str, domain: Domain, digest_hex: str, signature_hex: str) -> bool:
    try:
        key = public_key_from_did(did)
    except EncodingError:
        return False
    return verify_digest(key, domain, digest_hex, signature_hex)
