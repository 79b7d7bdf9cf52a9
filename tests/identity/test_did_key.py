"""did:key for Ed25519 (multicodec 0xed01, base58btc), checked against the did:key test vectors."""

from __future__ import annotations

import base58
import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.crypto import (
    did_from_public_key,
    is_did,
    is_prime_order_point,
    public_key_from_did,
)

# From the W3C CCG did:key method's test vectors (test-vectors/ed25519-x25519.json): a 32-byte
# seed, its did, and the public key in base58btc.
DID_KEY_VECTORS = [
    (
        "00" * 32,
        "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp",
        "4zvwRjXUKGfvwnParsHAS3HuSVzV5cA4McphgmoCtajS",
    ),
    (
        "00" * 31 + "01",
        "did:key:z6MkjchhfUsD6mmvni8mCdXHw216Xrm9bQe2mBH1P5RDjVJG",
        "6ASf5EcmmEHTgDJ4X4ZT5vT6iHVJBXPg5AN5YoTCpGWt",
    ),
    (
        "00" * 31 + "02",
        "did:key:z6MknGc3ocHs3zdPiJbnaaqDi58NGb4pk1Sp9WxWufuXSdxf",
        "8pM1DN3RiT8vbom5u1sNryaNT1nyL8CTTW3b5PwWXRBH",
    ),
    (
        "00" * 31 + "03",
        "did:key:z6MkvqoYXQfDDJRv8L4wKzxYeuKyVZBfi9Qo6Ro8MiLH3kDQ",
        "HPYVwAQmskwT1qEEeRzhoomyfyupJGASQQtCXSNG8XS2",
    ),
    (
        "00" * 31 + "04",
        "did:key:z6MkwW6aqMnjgrhJXFUko3NnZPGzVpkNzhYK7yEhnsibmLwL",
        "J3qYF7YJMKCqQke47UQwiHizgFUXapHxRxKmxbkar89x",
    ),
]


@pytest.mark.parametrize(("seed", "did", "public_b58"), DID_KEY_VECTORS)
def test_did_key_vectors(seed, did, public_b58):
    public = bytes(nacl.signing.SigningKey(bytes.fromhex(seed)).verify_key)
    assert base58.b58encode(public).decode() == public_b58
    assert did_from_public_key(public) == did
    assert public_key_from_did(did) == public


@given(st.binary(min_size=32, max_size=32))
def test_round_trip(public):
    """Any 32 bytes spell a did; it parses back exactly when they are a key of prime order
    (most random bytes are not even on the curve: tests/identity/test_did_key_points.py)."""
    did = did_from_public_key(public)
    assert did.startswith("did:key:z6Mk")
    if is_prime_order_point(public):
        assert public_key_from_did(did) == public
    else:
        with pytest.raises(EncodingError, match="prime order"):
            public_key_from_did(did)


@given(st.binary(min_size=32, max_size=32))
def test_round_trip_of_real_keys(seed):
    public = bytes(nacl.signing.SigningKey(seed).verify_key)
    assert public_key_from_did(did_from_public_key(public)) == public


def _did_of(raw: bytes) -> str:
    return "did:key:z" + base58.b58encode(raw).decode()


@pytest.mark.parametrize(
    "did",
    [
        _did_of(b"\xec\x01" + b"\x01" * 32),  # x25519-pub, not ed25519-pub
        _did_of(b"\xe7\x01" + b"\x02" * 33),  # secp256k1-pub
        _did_of(b"\xed\x01" + b"\x01" * 31),  # key too short
        _did_of(b"\xed\x01" + b"\x01" * 33),  # key too long
        "did:key:f" + (b"\xed\x01" + b"\x01" * 32).hex(),  # base16 multibase, not base58btc
        "did:web:example.com",
        "did:key:z0OIl",  # not base58 alphabet
        "",
        "did:key:z" + "1" * 100,
    ],
)
def test_rejects_other_keys_and_encodings(did):
    assert not is_did(did)
    with pytest.raises(EncodingError):
        public_key_from_did(did)


def test_rejects_non_canonical_base58_spelling():
    """A leading '1' decodes to a leading zero byte: a second spelling of some key."""
    did = did_from_public_key(b"\x07" * 32)
    assert not is_did("did:key:z1" + did.removeprefix("did:key:z"))
