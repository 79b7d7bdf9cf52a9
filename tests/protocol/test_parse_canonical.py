"""``parse_canonical``'s fast path must decide exactly as the exact path (parse, re-encode with
rfc8785, compare), on canonical text and on text one edit away from it; the vote template and
the hashes read off stored bytes must equal ``hash_object`` of the parsed value."""

from __future__ import annotations

from typing import Any

import pytest
import rfc8785
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.block import BlockHeader, CommitCertificate, Vote, VoteType
from bcfl_cli.protocol.encoding import (
    _FAST_DECODER,
    _FAST_ENCODER,
    MAX_SAFE_INT,
    NotCanonicalError,
    _parse_canonical_exact,
    canonical,
    hash_object,
    parse_canonical,
)
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from tests.chain.factories import did_for, key_for

printable = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=10)
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT)
    | st.integers(min_value=-(2**60), max_value=2**60)  # some out of the safe range
    | st.sampled_from([0, -1, 10**15, -(10**15), MAX_SAFE_INT, -MAX_SAFE_INT])
    | printable
    | st.text(max_size=6)  # any unicode: escapes, non-ASCII, surrogates' neighbours
    | st.sampled_from(["", " ", "-0", '"', "\\", "\\u0041", "a b", "/", "\x7f", "\u2028"])
)
keys = printable | st.text(max_size=4)
documents = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=16,
)
#: Characters whose insertion or substitution changes what canonical text means.
EDITS = list(' -0123456789"\\{}[],:.eEuU/tfn+\t\n') + ["\\u0041", "\\/", "1.0", "-0", "  "]


def one_edit_away(text: str, data: st.DataObject, pieces: list[str]) -> str:
    """``text`` with one piece inserted or put in place of a character, one character deleted,
    or two neighbours swapped: where a parser that is almost right is wrong."""
    pos = data.draw(st.integers(min_value=0, max_value=len(text)))
    action = data.draw(st.sampled_from(["insert", "replace", "delete", "swap"]))
    piece = data.draw(st.sampled_from(pieces))
    if action == "insert":
        return text[:pos] + piece + text[pos:]
    if action == "replace":
        return text[:pos] + piece + text[pos + 1 :]
    if action == "delete":
        return text[:pos] + text[pos + 1 :]
    return text[:pos] + text[pos + 1 : pos + 2] + text[pos : pos + 1] + text[pos + 2 :]


def _outcome(parse: Any, text: str | bytes) -> tuple[str, str]:
    try:
        return ("ok", repr(parse(text)))
    except NotCanonicalError:
        return ("not_canonical", "")
    except EncodingError:
        return ("error", "")


def _same_as_exact(text: str | bytes) -> None:
    assert _outcome(parse_canonical, text) == _outcome(_parse_canonical_exact, text), text


def _rfc(doc: Any) -> str | None:
    try:
        return bytes(rfc8785.dumps(doc)).decode("utf-8")
    except (rfc8785.CanonicalizationError, ValueError):
        return None


@settings(max_examples=600, deadline=None)
@given(documents)
def test_canonical_text_parses_to_its_value(doc: Any) -> None:
    text = _rfc(doc)
    if text is None:
        return
    _same_as_exact(text)
    _same_as_exact(text.encode("utf-8"))
    if _outcome(_parse_canonical_exact, text)[0] == "ok":
        assert canonical(parse_canonical(text)) == text.encode("utf-8")


@settings(max_examples=1000, deadline=None)
@given(documents, st.data())
def test_one_edit_away_decides_as_the_exact_path(doc: Any, data: st.DataObject) -> None:
    text = _rfc(doc)
    if text is None:
        return
    edited = one_edit_away(text, data, EDITS)
    _same_as_exact(edited)


@pytest.mark.parametrize(
    "text",
    [
        '{"a":1,"b":2}',
        '{"b":1,"a":2}',  # unsorted
        '{"a":1,"a":2}',  # duplicate
        '{"a":1, "b":2}',  # whitespace between tokens
        '{"a":"x y"}',  # a space inside a string is fine
        '{"a":-0}',
        '{"a":"-0"}',
        '{"a":1.0}',
        '{"a":1e5}',
        '{"a":NaN}',
        '{"a":Infinity}',
        '{"a":-Infinity}',
        f'{{"a":{MAX_SAFE_INT}}}',
        f'{{"a":{-MAX_SAFE_INT}}}',
        f'{{"a":{MAX_SAFE_INT + 1}}}',
        f'{{"a":{-MAX_SAFE_INT - 1}}}',
        '{"a":"\\u0041"}',  # an unnecessary escape
        '{"a":"\\u00e9"}',  # RFC 8785 writes the character itself
        '{"a":"\\n"}',  # the canonical escape of a control character
        '{"a":"\\/"}',
        '{"a":"\\\\u0041"}',  # an escaped backslash followed by "u0041"
        '{"a":"\\"\\\\"}',
        '{"\\u00e9":1}',
        '"top"',
        "12",
        "true",
        "null",
        "[]",
        "{}",
        " {}",
        "{} ",
        "[1,]",
        '{"a":01}',
        "[" * 32 + "]" * 32,
        "[" * 33 + "]" * 33,  # deeper than allowed
        '{"a":[' + ",".join(["{}"] * 40) + "]}",  # many brackets, shallow: the exact path
        '{"a":"é"}',
        '{"a":"\x7f"}',
    ],
)
def test_edge_cases_decide_as_the_exact_path(text: str) -> None:
    _same_as_exact(text)
    _same_as_exact(text.encode("utf-8"))


def test_size_limit_applies_to_both_paths() -> None:
    with pytest.raises(EncodingError, match="exceeds"):
        parse_canonical('{"a":"' + "x" * 100 + '"}', max_bytes=50)


# --- hashes without re-encoding -------------------------------------------------------------
CHAIN = "ab" * 32
dids = st.sampled_from([did_for(n) for n in ("alice", "bob", "carol")])
odd_text = st.text(max_size=8)


@settings(max_examples=300, deadline=None)
@given(
    chain=st.sampled_from([CHAIN, "", 'x"y', "\\", "é"]) | odd_text,
    height=st.integers(min_value=-(2**54), max_value=2**54) | st.booleans(),
    round_=st.integers(min_value=0, max_value=2**54),
    vtype=st.sampled_from(list(VoteType)),
    block=st.sampled_from(["", "cd" * 32]) | odd_text,
    validator=dids | odd_text,
)
def test_vote_hash_template_equals_canonical(
    chain: str, height: int, round_: int, vtype: VoteType, block: str, validator: str
) -> None:
    vote = Vote(chain, height, round_, vtype, block, validator)
    try:
        expected = hash_object(vote.unsigned())
    except EncodingError:
        with pytest.raises(EncodingError):
            _ = vote.hash
        return
    assert vote.hash == expected


def test_hashes_read_off_canonical_bytes() -> None:
    key = key_for("alice")
    tx = make_tx(
        key,
        CHAIN,
        TxKind.VALIDATION,
        {"update": "ef" * 32, "verdict": "reject", "reason": "bad_norm", "detail": 'a "b" \\ c'},
    )
    text = canonical(tx.to_dict())
    read = Transaction.from_canonical(text.decode())
    assert read == tx
    assert read.hash == tx.hash == hash_object(tx.unsigned())
    assert read.digest() == tx.digest() == (tx.hash, len(text))
    parsed = Transaction.from_dict(tx.to_dict())  # kept after its first use, same value
    assert parsed.digest() == parsed.digest() == read.digest() and parsed.signature_valid()
    header = BlockHeader(3, "00" * 32, 5, did_for("bob"), "11" * 32, "22" * 32, "33" * 32)
    stored = canonical(header.to_dict())
    assert BlockHeader.from_canonical(stored).hash == header.hash == hash_object(header.to_dict())
    commit = CommitCertificate(3, 0, header.hash, ((did_for("bob"), "44" * 64),))
    assert CommitCertificate.from_canonical(canonical(commit.to_dict())) == commit


def test_from_canonical_refuses_other_spellings() -> None:
    tx = make_tx(
        key_for("alice"),
        CHAIN,
        TxKind.VALIDATION,
        {"update": "ef" * 32, "verdict": "accept", "reason": "ok", "detail": ""},
    )
    text = canonical(tx.to_dict()).decode()
    with pytest.raises(NotCanonicalError):
        Transaction.from_canonical(text.replace('"tx":', '"tx": '))
    with pytest.raises(NotCanonicalError):
        Transaction.from_canonical(text.replace('"detail":""', '"detail":"\\u0041"'))


# --- headers and certificates by template ---------------------------------------------------
hexes = st.binary(min_size=32, max_size=32).map(bytes.hex)
ints = st.integers(min_value=0, max_value=2**53 + 5)
headers = st.builds(
    BlockHeader,
    height=ints,
    prev=hexes,
    time=ints,
    proposer=dids,
    tx_root=hexes,
    validators=hexes,
    config=hexes,
)
certificates = st.builds(
    lambda h, r, b, signers: CommitCertificate(
        h, r, b, tuple(sorted((d, s.hex()) for d, s in signers.items()))
    ),
    ints,
    ints,
    hexes,
    st.dictionaries(dids, st.binary(min_size=64, max_size=64), max_size=3),
)


def _decides_as_generic(parse_fast: Any, parse_dict: Any, text: str) -> None:
    def generic(t: str) -> Any:
        return parse_dict(_parse_canonical_exact(t))

    assert _outcome(parse_fast, text) == _outcome(generic, text), text


@settings(max_examples=300, deadline=None)
@given(headers, certificates, st.data())
def test_header_and_certificate_templates_decide_as_the_generic_path(
    header: BlockHeader, commit: CommitCertificate, data: st.DataObject
) -> None:
    for obj, cls in ((header, BlockHeader), (commit, CommitCertificate)):
        try:
            text = canonical(obj.to_dict()).decode()
        except EncodingError:  # an integer out of the safe range
            continue
        _decides_as_generic(cls.from_canonical, cls.from_dict, text)
        pos = data.draw(st.integers(min_value=0, max_value=len(text)))
        piece = data.draw(st.sampled_from(EDITS))
        _decides_as_generic(cls.from_canonical, cls.from_dict, text[:pos] + piece + text[pos:])
        _decides_as_generic(cls.from_canonical, cls.from_dict, text[:pos] + piece + text[pos + 1 :])
    if all(0 <= v <= MAX_SAFE_INT for v in (header.height, header.time)):
        assert BlockHeader.from_canonical(canonical(header.to_dict())).hash == header.hash


@settings(max_examples=200, deadline=None)
@given(certificates, st.sampled_from([CHAIN, "", 'x"y', "é"]) | odd_text)
def test_precommit_digests_equal_each_vote_hash(commit: CommitCertificate, chain: str) -> None:
    try:
        expected = [bytes.fromhex(commit.precommit(chain, d, s).hash) for d, s in commit.signatures]
    except EncodingError:
        with pytest.raises(EncodingError):
            commit.precommit_digests(chain)
        return
    assert commit.precommit_digests(chain) == expected


ascii_text = st.text(alphabet=st.characters(max_codepoint=127), max_size=8)
ascii_documents = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-MAX_SAFE_INT, max_value=MAX_SAFE_INT)
    | st.sampled_from([0, -1, MAX_SAFE_INT, -MAX_SAFE_INT])
    | ascii_text,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(ascii_text, children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=1000, deadline=None)
@given(ascii_documents)
def test_the_fast_encoder_is_rfc8785_on_ascii_values(doc: Any) -> None:
    """The proof the fast path rests on: over ASCII strings and keys (controls included),
    safe integers, booleans, null, arrays and objects, msgspec's sorted compact output is
    RFC 8785, and the fast decoder reads that text back to the same value."""
    expected = bytes(rfc8785.dumps(doc))
    assert _FAST_ENCODER.encode(doc) == expected
    assert canonical(doc) == expected
    assert _FAST_DECODER.decode(expected) == doc
    fast = parse_canonical(expected)
    assert fast == doc and repr(fast) == repr(_parse_canonical_exact(expected))


@pytest.mark.parametrize("code", range(128))
def test_every_ascii_character_is_escaped_as_rfc8785_does(code: int) -> None:
    text = chr(code)
    assert _FAST_ENCODER.encode({text: text}) == bytes(rfc8785.dumps({text: text}))


@pytest.mark.parametrize(
    "text",
    [
        "1.0",
        "1e2",
        "-0",
        "9007199254740992",
        '{"a":1,"a":1}',
        '"\\u0041"',
        '"\\/"',
        '"\\ud800"',
        '"\\u00e9"',
        "[" * 9 + "]" * 9,  # deeper than the fast decoder follows: decided exactly
        '{"a":1,"b":2}',
    ],
)
def test_what_the_fast_decoder_cannot_prove_is_decided_exactly(text: str) -> None:
    _same_as_exact(text)
    _same_as_exact(text.encode("ascii"))
