"""did:key refuses public keys that are not of prime order (issue 16, item 13).

Pins libsodium's verdict (``crypto_core_ed25519_is_valid_point``) on each kind of bad key: the
identity, the other seven small-order points, a non-canonical encoding, a point off the curve,
and mixed-order points A + T, under which some signatures made with A's secret verify (the
attack). Refused where a did is parsed, hence in transactions (a join request's author), in
the consortium file and in the genesis document.
"""

from __future__ import annotations

import hashlib

import nacl.bindings
import nacl.exceptions
import nacl.signing
import pytest

from bcfl_cli.chain.config import parse_document
from bcfl_cli.consortium import parse_config
from bcfl_cli.errors import BcflError, EncodingError
from bcfl_cli.protocol.crypto import (
    Domain,
    did_from_public_key,
    is_did,
    is_prime_order_point,
    public_key_from_did,
    sign_digest,
    verify_by_did,
)
from bcfl_cli.protocol.tx import Transaction, TxKind
from tests.consortium.test_consortium_config import _data, _refused

P = 2**255 - 19

#: The eight points of small order (the torsion subgroup), as libsodium's blocklist writes them.
TORSION = {
    "identity (order 1)": "01" + "00" * 31,
    "order 2": "ec" + "ff" * 30 + "7f",
    "order 4": "00" * 32,
    "order 4, x negated": "00" * 31 + "80",
    "order 8": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "order 8, x negated": "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
    "order 8, other": "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "order 8, other, x negated": (
        "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa"
    ),
}
#: The identity with y = 1 + p: the same point, not in canonical form.
NON_CANONICAL_IDENTITY = (1 + P).to_bytes(32, "little")
A_KEY = nacl.signing.SigningKey(hashlib.sha256(b"bcfl-test-key:mixed-order").digest())
A = bytes(A_KEY.verify_key)


def _off_curve() -> bytes:
    """The first y whose x^2 = (y^2 - 1) / (d y^2 + 1) has no square root mod p."""
    d = -121665 * pow(121666, -1, P) % P
    for y in range(2, 1000):
        x2 = (y * y - 1) * pow(d * y * y + 1, -1, P) % P
        if pow(x2, (P - 1) // 2, P) == P - 1:
            return y.to_bytes(32, "little")
    raise AssertionError("no off-curve y below 1000")


def _mixed(torsion_hex: str) -> bytes:
    return bytes(nacl.bindings.crypto_core_ed25519_add(A, bytes.fromhex(torsion_hex)))


BAD_KEYS = {
    **{name: bytes.fromhex(h) for name, h in TORSION.items()},
    "identity, non-canonical y": NON_CANONICAL_IDENTITY,
    "off the curve": _off_curve(),
    **{f"A + {name}": _mixed(h) for name, h in TORSION.items() if "identity" not in name},
}


@pytest.mark.parametrize("name", sorted(BAD_KEYS))
def test_keys_not_of_prime_order_are_refused_as_dids(name):
    key = BAD_KEYS[name]
    assert not is_prime_order_point(key)
    did = did_from_public_key(key)  # it can be spelt: a stranger may send one
    with pytest.raises(EncodingError, match="prime order"):
        public_key_from_did(did)
    assert not is_did(did)
    assert not verify_by_did(did, Domain.TX, "00" * 32, "00" * 64)


def _sign_as(seed: bytes, public: bytes, message: bytes) -> bytes:
    """RFC 8032 signing with ``seed``'s secret scalar but ``public`` in the challenge hash:
    what the holder of A's secret does to sign for the key A + T."""
    b = nacl.bindings
    h = hashlib.sha512(seed).digest()
    scalar = bytearray(h[:32])
    scalar[0] &= 248
    scalar[31] &= 127
    scalar[31] |= 64
    a = b.crypto_core_ed25519_scalar_reduce(bytes(scalar) + bytes(32))
    r = b.crypto_core_ed25519_scalar_reduce(hashlib.sha512(h[32:] + message).digest())
    big_r = b.crypto_scalarmult_ed25519_base_noclamp(r)
    k = b.crypto_core_ed25519_scalar_reduce(hashlib.sha512(big_r + public + message).digest())
    s = b.crypto_core_ed25519_scalar_add(r, b.crypto_core_ed25519_scalar_mul(k, a))
    return bytes(big_r + s)


def test_a_secret_signs_for_a_plus_t_one_message_in_eight():
    """Why: libsodium's verify refuses small-order keys but not mixed-order ones, and checks
    the cofactorless equation [S]B = R + [k](A + T), which holds when [k]T is the identity,
    i.e. for one challenge k in eight (T of order 8). So whoever holds A's secret also
    speaks for A + T, a second identity; its did is therefore refused outright."""
    seed = hashlib.sha256(b"bcfl-test-key:mixed-order").digest()
    assert bytes(nacl.signing.SigningKey(seed).verify_key) == A
    mixed = BAD_KEYS["A + order 8"]
    forged = []
    for i in range(64):
        digest = hashlib.sha256(i.to_bytes(2, "big")).hexdigest()
        message = Domain.TX.value + b"\x00" + bytes.fromhex(digest)
        signature = _sign_as(seed, mixed, message)
        try:
            nacl.signing.VerifyKey(mixed).verify(message, signature)
        except nacl.exceptions.BadSignatureError:
            continue
        forged.append(digest)
        assert not verify_by_did(did_from_public_key(mixed), Domain.TX, digest, signature.hex())
    assert 0 < len(forged) < 64, len(forged)  # about one in eight (8 of 64 in the issue)
    # the same signer, signing for A itself, is an honest signer
    digest = "ab" * 32
    message = Domain.TX.value + b"\x00" + bytes.fromhex(digest)
    assert _sign_as(seed, A, message).hex() == sign_digest(A_KEY, Domain.TX, digest)


def test_honest_key_still_parses():
    assert public_key_from_did(did_from_public_key(A)) == A


def test_a_join_request_from_a_mixed_order_key_is_refused():
    """A join request names its author by did: a key of A + T never gets as far as a pending
    request (nor can it sign an HTTP request, whose keyid is parsed the same way)."""
    did = did_from_public_key(BAD_KEYS["A + order 8"])
    unsigned = {
        "v": 1,
        "chain": "ab" * 32,
        "kind": str(TxKind.JOIN_REQUEST),
        "author": did,
        "nonce": "cd" * 16,
        "time": 1,
        "body": {"name": "eve", "roles": ["trainer"], "power": 0},
    }
    with pytest.raises(EncodingError, match="author"):
        Transaction.from_dict({"tx": unsigned, "sig": "00" * 64})


@pytest.mark.parametrize("name", ["identity (order 1)", "A + order 8"])
def test_consortium_file_and_genesis_refuse_such_a_member(name):
    data = _data()
    data["members"][1]["did"] = did_from_public_key(BAD_KEYS[name])
    _refused(data, r"members\[1\]\.did: not an Ed25519 did:key: its public key is not of prime")
    document = parse_config(_data(), "x").to_document("ab" * 32)
    document["members"][1]["did"] = data["members"][1]["did"]
    with pytest.raises(BcflError, match=r"members\[1\]\.did is not an Ed25519 did:key"):
        parse_document(document)
