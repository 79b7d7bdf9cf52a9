"""RFC 8032 §7.1 vectors through PyNaCl as bcfl uses it, and edge cases all peers must agree on.

What one validator accepts, all must: the edge cases below pin libsodium's answers so that a
library upgrade that changes them fails here instead of silently splitting the consortium.
"""

from __future__ import annotations

import hashlib

import nacl.signing
import pytest

from bcfl_cli.protocol.crypto import (
    Domain,
    did_from_public_key,
    sign_digest,
    signing_message,
    verify_by_did,
    verify_digest,
)

# (secret key, public key, message, signature) from RFC 8032 section 7.1
RFC8032 = {
    "TEST 1": (
        "9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60",
        "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a",
        "",
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e06522490155"
        "5fb8821590a33bacc61e39701cf9b46bd25bf5f0595bbe24655141438e7a100b",
    ),
    "TEST 2": (
        "4ccd089b28ff96da9db6c346ec114e0f5b8a319f35aba624da8cf6ed4fb8a6fb",
        "3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c",
        "72",
        "92a009a9f0d4cab8720e820b5f642540a2b27b5416503f8fb3762223ebdb69da"
        "085ac1e43e15996e458f3613d0f11d8c387b2eaeb4302aeeb00d291612bb0c00",
    ),
    "TEST 3": (
        "c5aa8df43f9f837bedb7442f31dcb7b166d38535076f094b85ce3a2e0b4458f7",
        "fc51cd8e6218a1a38da47ed00230f0580816ed13ba3303ac5deb911548908025",
        "af82",
        "6291d657deec24024827e69c3abe01a30ce548a284743a445e3680d7db5ac3ac"
        "18ff9b538d16f290ae67f760984dc6594a7c15e9716ed28dc027beceea1ec40a",
    ),
    "TEST SHA(abc)": (
        "833fe62409237b9d62ec77587520911e9a759cec1d19755b7da901b96dca3d42",
        "ec172b93ad5e563bf4932c70e1245034c35467ef2efd4d64ebf819683467e2bf",
        hashlib.sha512(b"abc").hexdigest(),
        "dc2a4459e7369633a52b1bf277839a00201009a3efbf3ecb69bea2186c26b589"
        "09351fc9ac90b3ecfdfbc7c66431e0303dca179c138ac17ad9bef1177331a704",
    ),
}

#: group order of the Ed25519 base point
L = 2**252 + 27742317777372353535851937790883648493

#: Encodings of the eight points of small order (the torsion subgroup), as libsodium lists them.
SMALL_ORDER_POINTS = [
    "0100000000000000000000000000000000000000000000000000000000000000",
    "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
    "0000000000000000000000000000000000000000000000000000000000000000",
    "0000000000000000000000000000000000000000000000000000000000000080",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a",
    "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc05",
    "26e8958fc2b227b045c3f489f2ef98f0d5dfac05d3c63339b13802886d53fc85",
]


@pytest.mark.parametrize("name", sorted(RFC8032))
def test_rfc8032_vectors(name):
    secret, public, message, signature = RFC8032[name]
    key = nacl.signing.SigningKey(bytes.fromhex(secret))
    assert bytes(key.verify_key).hex() == public
    assert key.sign(bytes.fromhex(message)).signature.hex() == signature
    nacl.signing.VerifyKey(bytes.fromhex(public)).verify(
        bytes.fromhex(message), bytes.fromhex(signature)
    )


@pytest.mark.parametrize("name", sorted(RFC8032))
def test_domain_separated_round_trip_with_rfc_keys(name):
    secret, public, _, _ = RFC8032[name]
    key = nacl.signing.SigningKey(bytes.fromhex(secret))
    digest = hashlib.sha256(name.encode()).hexdigest()
    sig = sign_digest(key, Domain.TX, digest)
    assert verify_digest(bytes.fromhex(public), Domain.TX, digest, sig)
    assert verify_by_did(did_from_public_key(bytes.fromhex(public)), Domain.TX, digest, sig)
    # the same signature is worthless under any other domain or digest
    for domain in (Domain.VOTE, Domain.PROPOSAL, Domain.HTTP):
        assert not verify_digest(bytes.fromhex(public), domain, digest, sig)
    other = hashlib.sha256(b"other").hexdigest()
    assert not verify_digest(bytes.fromhex(public), Domain.TX, other, sig)


def test_signing_format_is_pinned():
    """A change to the signed bytes (domain prefix, separator) would orphan every chain."""
    key = nacl.signing.SigningKey(bytes.fromhex(RFC8032["TEST 1"][0]))
    digest = hashlib.sha256(b"").hexdigest()
    assert signing_message(Domain.TX, digest) == b"bcfl/tx/v1\x00" + bytes.fromhex(digest)
    assert sign_digest(key, Domain.TX, digest) == (
        "a98fffd161dcdd7f27a5971b8c00263f624e02f4b353c8183ceadd699e0c3b0d"
        "b2785c1a6e8cc8b5803cc355ad7650161871b4c190a4e64fb68858d932e1460f"
    )


def test_non_canonical_s_is_rejected():
    """S + L verifies under a lax verifier (same point); libsodium requires S < L."""
    secret, public, _, _ = RFC8032["TEST 1"]
    key = nacl.signing.SigningKey(bytes.fromhex(secret))
    digest = hashlib.sha256(b"x").hexdigest()
    sig = bytes.fromhex(sign_digest(key, Domain.TX, digest))
    s = int.from_bytes(sig[32:], "little")
    malleated = sig[:32] + (s + L).to_bytes(32, "little")
    assert verify_digest(bytes.fromhex(public), Domain.TX, digest, sig.hex())
    assert not verify_digest(bytes.fromhex(public), Domain.TX, digest, malleated.hex())


@pytest.mark.parametrize("point", SMALL_ORDER_POINTS)
def test_small_order_public_keys_are_rejected(point):
    """With a small-order key A, R = A-ish and S = 0 "verifies" any message under a cofactored
    or lax verifier; such keys must never sign anything on a bcfl chain."""
    digest = hashlib.sha256(b"anything").hexdigest()
    for r in (point, SMALL_ORDER_POINTS[0]):
        forged = r + "00" * 32
        assert not verify_digest(bytes.fromhex(point), Domain.TX, digest, forged)
    assert not verify_by_did(
        did_from_public_key(bytes.fromhex(point)), Domain.TX, digest, "00" * 64
    )


@pytest.mark.parametrize("bad", ["", "00" * 63, "00" * 65, "zz" * 64])
def test_malformed_signatures_are_false_not_errors(bad):
    public = bytes.fromhex(RFC8032["TEST 1"][1])
    assert not verify_digest(public, Domain.TX, "00" * 32, bad)
