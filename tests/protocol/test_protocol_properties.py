"""Property tests of the protocol encodings (docs/PROTOCOL.md §1-§5).

Every signed object round-trips through its canonical bytes unchanged, has exactly one
canonical form whatever the key order or whitespace it arrived in, and the parser refuses the
inputs two implementations could read differently (duplicate keys, floats).
"""

from __future__ import annotations

import json

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.block import (
    NIL,
    Block,
    BlockHeader,
    CommitCertificate,
    ValidatorSet,
    Vote,
    VoteType,
)
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import canonical, hash_object, parse_json
from bcfl_cli.protocol.merkle import merkle_root
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx

#: per test, not a global profile: other test modules keep their own settings
fast = settings(max_examples=50, deadline=None)

hashes = st.binary(min_size=32, max_size=32).map(bytes.hex)
keys = st.binary(min_size=32, max_size=32).map(nacl.signing.SigningKey)
dids = keys.map(lambda k: did_from_public_key(bytes(k.verify_key)))
u53 = st.integers(min_value=0, max_value=2**53 - 1)
pos = st.integers(min_value=1, max_value=2**53 - 1)
text = st.text(
    st.characters(
        codec="utf-8", exclude_categories=("Cc", "Cs", "Zl", "Zp", "Cf", "Co", "Cn", "Zs")
    ),
    max_size=40,
)
codes = st.from_regex(r"[a-z][a-z0-9_]{0,20}", fullmatch=True)
decimals = st.decimals(allow_nan=False, allow_infinity=False, places=6).map(
    lambda d: str(d.normalize()) if "E" not in str(d.normalize()) else "0"
)

BODIES = {
    TxKind.JOIN_REQUEST: st.fixed_dictionaries(
        {
            "name": text.filter(lambda s: 1 <= len(s) <= 64),
            "roles": st.sampled_from([["trainer"], ["validator"], ["trainer", "validator"]]),
            "power": st.integers(0, 1_000_000),
        },
        optional={"tls": hashes},
    ),
    TxKind.APPROVE_MEMBER: st.fixed_dictionaries({"member": dids, "request": hashes}),
    TxKind.REMOVE_MEMBER: st.fixed_dictionaries({"member": dids, "reason": text}),
    TxKind.OPEN_ROUND: st.fixed_dictionaries(
        {"round": pos, "base_model": hashes, "deadline_height": u53}
    ),
    TxKind.UPDATE: st.fixed_dictionaries(
        {
            "round": pos,
            "base_model": hashes,
            "blob": hashes,
            "blob_size": pos,
            "num_samples": pos,
            "metrics": st.dictionaries(codes, decimals, max_size=4),
        }
    ),
    TxKind.VALIDATION: st.fixed_dictionaries(
        {
            "update": hashes,
            "verdict": st.sampled_from(["accept", "reject"]),
            "reason": codes,
            "detail": text,
        }
    ),
    TxKind.AGGREGATE: st.fixed_dictionaries(
        {
            "round": pos,
            "updates": st.lists(hashes, max_size=5, unique=True),
            "rule": codes,
            "params": st.dictionaries(codes, st.one_of(u53, decimals), max_size=4),
            "model": hashes,
            "model_size": pos,
        }
    ),
    TxKind.MISBEHAVIOUR: st.fixed_dictionaries(
        {"offender": dids, "votes": st.just([{"a": 1}, {"b": 2}])}
    ),
    TxKind.TLS_CERTIFICATE: st.fixed_dictionaries({"fingerprint": hashes}),
    TxKind.TLS_MODE: st.fixed_dictionaries({"mode": st.sampled_from(["pinned", "ca"])}),
}


@st.composite
def transactions(draw) -> Transaction:
    kind = draw(st.sampled_from(list(TxKind)))
    nonce = draw(st.binary(min_size=16, max_size=16)).hex()
    return make_tx(
        draw(keys), draw(hashes), kind, draw(BODIES[kind]), time_ms=draw(u53), nonce=nonce
    )


@st.composite
def votes(draw) -> Vote:
    key = draw(keys)
    vote = Vote(
        draw(hashes),
        draw(u53),
        draw(u53),
        draw(st.sampled_from(list(VoteType))),
        draw(st.one_of(st.just(NIL), hashes)),
        did_from_public_key(bytes(key.verify_key)),
    )
    return vote.signed(key)


@st.composite
def headers(draw) -> BlockHeader:
    return BlockHeader(
        height=draw(st.integers(1, 2**53 - 1)),
        prev=draw(hashes),
        time=draw(u53),
        proposer=draw(dids),
        tx_root=draw(hashes),
        validators=draw(hashes),
        config=draw(hashes),
    )


@st.composite
def certificates(draw) -> CommitCertificate:
    return draw(chained_certificates())[1]


@st.composite
def chained_certificates(draw) -> tuple[str, CommitCertificate]:
    chain, height, rnd, block = draw(hashes), draw(u53), draw(u53), draw(hashes)
    signers = draw(st.lists(keys, min_size=1, max_size=4))
    return chain, CommitCertificate.from_votes(
        Vote(
            chain, height, rnd, VoteType.PRECOMMIT, block, did_from_public_key(bytes(k.verify_key))
        ).signed(k)
        for k in signers
    )


def _roundtrip(obj_dict) -> bytes:
    data = canonical(obj_dict)
    assert canonical(parse_json(data)) == data
    return data


@fast
@given(transactions())
def test_transaction_roundtrip_and_signature(tx):
    data = _roundtrip(tx.to_dict())
    back = Transaction.from_dict(parse_json(data))
    assert back == tx and back.hash == tx.hash
    assert back.signature_valid()


@fast
@given(votes())
def test_vote_roundtrip(vote):
    back = Vote.from_dict(parse_json(_roundtrip(vote.to_dict())))
    assert back == vote and back.signature_valid()


@fast
@given(chained_certificates())
def test_certificate_roundtrip(chained):
    chain, cert = chained
    back = CommitCertificate.from_dict(parse_json(_roundtrip(cert.to_dict())))
    assert back == cert
    validators = ValidatorSet.from_mapping({d: 1 for d, _ in cert.signatures})
    assert cert.signed_power(chain, validators) == len(cert.signatures)
    # precommits sign the chain id: the same certificate is worth nothing on another chain
    other = "ff" * 32 if chain != "ff" * 32 else "ee" * 32
    assert cert.signed_power(other, validators) == 0


@fast
@given(headers(), st.lists(transactions(), max_size=3), certificates())
def test_block_roundtrip(header, txs, cert):
    block = Block(header, tuple(txs), cert)
    back = Block.from_dict(parse_json(_roundtrip(block.to_dict())))
    assert back == block and back.hash == header.hash


@fast
@given(transactions(), st.randoms(use_true_random=False), st.sampled_from([None, 1, 2]))
def test_canonical_form_is_unique(tx, rng, indent):
    """Key order and whitespace of the input never change the canonical bytes or the hash."""

    def shuffled(value):
        if isinstance(value, dict):
            items = list(value.items())
            rng.shuffle(items)
            return {k: shuffled(v) for k, v in items}
        if isinstance(value, list):
            return [shuffled(v) for v in value]
        return value

    messy = json.dumps(shuffled(tx.to_dict()), indent=indent, ensure_ascii=rng.random() < 0.5)
    parsed = parse_json(messy)
    assert canonical(parsed) == canonical(tx.to_dict())
    assert Transaction.from_dict(parsed).hash == tx.hash


@fast
@given(st.dictionaries(codes, st.integers(-5, 5), min_size=1, max_size=5), st.data())
def test_parse_json_refuses_duplicate_keys(obj, data):
    key = data.draw(st.sampled_from(sorted(obj)))
    body = json.dumps(obj)[1:-1]
    with pytest.raises(EncodingError, match="duplicate"):
        parse_json("{" + body + f', "{key}": 0' + "}")


@fast
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_parse_json_and_canonical_refuse_floats(x):
    with pytest.raises(EncodingError):
        parse_json(json.dumps({"x": x if not x.is_integer() else x + 0.5}))
    with pytest.raises(EncodingError):
        canonical({"x": x})


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e3", "1.0"])
def test_parse_json_refuses_non_integers(text):
    with pytest.raises(EncodingError):
        parse_json('{"x": ' + text + "}")


def test_parse_json_is_bounded():
    with pytest.raises(EncodingError):
        parse_json("[" * 40 + "]" * 40)
    with pytest.raises(EncodingError):
        parse_json('"' + "a" * 100 + '"', max_bytes=50)


def test_signature_does_not_transfer_between_objects():
    key = nacl.signing.SigningKey(b"\x01" * 32)
    tx = make_tx(
        key,
        "ab" * 32,
        TxKind.REMOVE_MEMBER,
        {"member": did_from_public_key(bytes(key.verify_key)), "reason": ""},
    )
    vote = Vote("ab" * 32, 1, 0, VoteType.PRECOMMIT, tx.hash, tx.author, tx.signature)
    assert tx.signature_valid() and not vote.signature_valid()


# --- Merkle (RFC 6962 §2.1) ----------------------------------------------------------------
def _reference_mth(leaves: list[bytes]) -> bytes:
    """RFC 6962 MTH written from the RFC's definition, as an independent check."""
    import hashlib

    n = len(leaves)
    if n == 0:
        return hashlib.sha256(b"").digest()
    if n == 1:
        return hashlib.sha256(b"\x00" + leaves[0]).digest()
    k = 1 << ((n - 1).bit_length() - 1)
    return hashlib.sha256(
        b"\x01" + _reference_mth(leaves[:k]) + _reference_mth(leaves[k:])
    ).digest()


@fast
@given(st.lists(hashes, max_size=40))
def test_merkle_root_matches_rfc6962(leaves):
    assert merkle_root(leaves) == _reference_mth([bytes.fromhex(h) for h in leaves]).hex()


@fast
@given(st.lists(hashes, min_size=1, max_size=16, unique=True), st.data())
def test_merkle_root_commits_to_every_leaf_and_the_order(leaves, data):
    root = merkle_root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    changed = list(leaves)
    changed[i] = hash_object(leaves[i])
    assert merkle_root(changed) != root
    if len(leaves) > 1:
        assert merkle_root(list(reversed(leaves))) != root
        assert merkle_root(leaves[:-1]) != root


def test_merkle_leaf_cannot_pose_as_inner_node():
    import hashlib

    a, b = "11" * 32, "22" * 32
    inner = hashlib.sha256(
        b"\x01"
        + hashlib.sha256(b"\x00" + bytes.fromhex(a)).digest()
        + hashlib.sha256(b"\x00" + bytes.fromhex(b)).digest()
    ).hexdigest()
    assert merkle_root([a, b]) == inner
    assert merkle_root([inner]) != merkle_root([a, b])


@fast
@given(transactions())
def test_ledger_reads_the_hash_off_the_canonical_text(tx):
    from bcfl_cli.chain.state import tx_digest

    signed = canonical(tx.to_dict())
    read = Transaction.from_canonical(signed.decode("utf-8"))
    assert read.hash == tx.hash == hash_object(tx.unsigned())
    assert tx_digest(tx) == tx_digest(read) == (tx.hash, len(signed))


@fast
@given(transactions())
def test_the_kept_signed_text_is_the_canonical_signed_form(tx):
    """What the ledger stores for a transaction (kept with the object after the first call)."""
    expected = canonical(tx.to_dict()).decode("utf-8")
    assert tx.signed_text() == expected
    assert tx.signed_text() == expected  # the kept value, the same
    assert Transaction.from_canonical(expected).signed_text() == expected


#: A lone surrogate, written as a JSON escape (in a value and in a key) and as the three bytes
#: UTF-8 would give it (CESU-style; ``json.loads`` decodes bytes with ``surrogatepass``).
_LONE_SURROGATES = [
    '{"x": "\\ud800"}',
    '{"x": "a\\udfffb"}',
    '{"\\udc00": 1}',
    '["\\ud83d"]',  # the high half of an emoji, its low half missing
    b'{"x": "\xed\xa0\x80"}',
    b'["\xed\xbf\xbf"]',
]


@pytest.mark.parametrize("text", _LONE_SURROGATES)
def test_parse_json_refuses_lone_surrogates(text):
    """A value ``canonical`` would refuse is refused when parsed, as duplicate keys are."""
    with pytest.raises(EncodingError, match="surrogate"):
        parse_json(text)


@fast
@given(st.integers(0xD800, 0xDFFF), st.text(max_size=5), st.booleans())
def test_parse_json_refuses_every_lone_surrogate(code, around, as_key):
    escaped = json.dumps(around[:2] + chr(code) + around[2:])  # \udxxx, never a valid pair
    with pytest.raises(EncodingError, match="surrogate"):
        parse_json("{" + escaped + ": 1}" if as_key else "[" + escaped + "]")


@fast
@given(st.text(max_size=8))
def test_parse_json_keeps_valid_unicode_and_pairs(text):
    """Escaped surrogate pairs (astral characters) are valid text and still parse."""
    doc = {text: [text]}
    assert parse_json(json.dumps(doc, ensure_ascii=True)) == doc
    assert canonical(parse_json(json.dumps(doc, ensure_ascii=False).encode())) == canonical(doc)
