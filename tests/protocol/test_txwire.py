"""The C fast path of a stored transaction (``txwire.decode_stored``) may only accept what the
exact path (``parse_canonical`` then ``Transaction.from_dict``) accepts, with the same value;
``Transaction.from_canonical`` then decides exactly as the exact path, errors included, on
valid, mutated and hostile text. Valid transactions of the kinds a chain is made of take the
fast path (that is what it is for)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import EncodingError
from bcfl_cli.protocol.encoding import canonical, parse_canonical
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.protocol.txwire import decode_stored
from tests.chain.factories import key_for
from tests.protocol.test_parse_canonical import one_edit_away
from tests.protocol.test_protocol_properties import BODIES, hashes, transactions, u53

FAST_KINDS = (TxKind.OPEN_ROUND, TxKind.UPDATE, TxKind.VALIDATION, TxKind.AGGREGATE)
#: Pieces whose insertion or substitution changes what the text means or whether it is valid.
EDITS = [
    *' -0123456789"\\{}[],:.eEuU/tfnaAF+\t\n\x00\x7f',
    "\\n",
    "\\u0041",
    "\\u00e9",
    "é",
    "1.0",
    "-0",
    "  ",
    "null",
    "true",
    '"a":1,',
    "9007199254740992",
    "-9007199254740992",
    "nan",
    "inf",
]
#: Values put in place of one field of the signed form or of the body.
HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2**53 - 1,
    2**53,
    -(2**53 - 1),
    "",
    "\n",
    "a" * 64 + "\n",
    "A" * 64,
    "0" * 63,
    "0" * 65,
    "0" * 64,
    "0" * 128,
    "0" * 32,
    "accept",
    "reject",
    "ok_code",
    "Bad",
    "1.5",
    "-0",
    "nan",
    "x" * 65,
    "x" * 513,
    "tab\there",
    "é",
    [],
    ["0" * 64, "0" * 64],
    ["0" * 64],
    {},
    {"a": "1"},
    {"a": 1},
    {"A": "1"},
    {"a": "1\n"},
    {"a": ""},
    {f"k{i}": "1" for i in range(33)},
]


def _exact(raw: bytes) -> Transaction:
    return Transaction.from_dict(parse_canonical(raw))


def _outcome(parse: Any, raw: bytes) -> tuple[str, Any, Any]:
    try:
        tx = parse(raw)
    except EncodingError as exc:
        return ("error", type(exc).__name__, exc.message)
    return ("ok", tx, tx.parsed_body)


def _check(raw: bytes) -> None:
    """The fast path accepts only what the exact path does, with the same value, and
    ``from_canonical`` decides as the exact path."""
    fast = decode_stored(raw)
    exact = _outcome(_exact, raw)
    if fast is not None:
        assert exact[0] == "ok", (raw, exact)
        tx = Transaction(*fast[:7])
        assert tx == exact[1] and fast[7] == exact[2], raw
        assert list(fast[5]) == list(exact[1].body)  # the same keys in the same order
    assert _outcome(Transaction.from_canonical, raw) == exact, raw


def _text(tx: Transaction) -> str:
    return canonical(tx.to_dict()).decode("utf-8")


fast_kind_transactions = st.builds(
    lambda kind, body, time, nonce, chain: make_tx(
        key_for("alice"), chain, kind, body, time_ms=time, nonce=nonce
    ),
    st.shared(st.sampled_from(FAST_KINDS), key="kind"),
    st.shared(st.sampled_from(FAST_KINDS), key="kind").flatmap(lambda k: BODIES[k]),
    u53,
    st.binary(min_size=16, max_size=16).map(bytes.hex),
    hashes,
)


@settings(max_examples=300, deadline=None)
@given(transactions())
def test_every_valid_transaction_decides_as_the_exact_path(tx: Transaction) -> None:
    raw = _text(tx).encode("utf-8")
    _check(raw)
    fast = decode_stored(raw)
    body_text = canonical(tx.body).decode("utf-8")
    printable = all(" " <= c <= "~" for c in body_text)
    if tx.kind in FAST_KINDS and printable:
        assert fast is not None, raw  # the kinds a chain is made of take the fast path
    if fast is not None:
        assert Transaction.from_canonical(raw).hash == tx.hash


@settings(max_examples=800, deadline=None)
@given(transactions(), st.data())
def test_text_one_edit_away_decides_as_the_exact_path(tx: Transaction, data: st.DataObject) -> None:
    text = _text(tx)
    edited = one_edit_away(text, data, EDITS)
    _check(edited.encode("utf-8"))


def _hostile_text(tx: Transaction, data: st.DataObject) -> str:
    """``tx``'s signed form with one field of the signed form, of UNSIGNED or of the body
    replaced by a hostile value, removed, or joined by an extra one; keys kept sorted, so
    that only the value decides (an unsorted text is refused by both paths alike)."""
    signed = tx.to_dict()
    where = data.draw(st.sampled_from(["signed", "unsigned", "body"]))
    target = {"signed": signed, "unsigned": signed["tx"], "body": signed["tx"]["body"]}[where]
    field = data.draw(st.sampled_from([*sorted(target), "extra"]))
    action = data.draw(st.sampled_from(["replace", "replace", "replace", "remove", "append"]))
    if action == "remove" and field in target:
        del target[field]
    elif action == "append" and isinstance(target.get(field), str):
        target[field] += data.draw(st.sampled_from(["\n", " ", "0", "A", "é", "\x00"]))
    else:
        target[field] = data.draw(st.sampled_from(HOSTILE))
    try:
        return canonical(signed).decode("utf-8")
    except EncodingError:  # an integer out of the safe range: the text a stranger could send
        return json.dumps(signed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@settings(max_examples=800, deadline=None)
@given(fast_kind_transactions | transactions(), st.data())
def test_hostile_values_decide_as_the_exact_path(tx: Transaction, data: st.DataObject) -> None:
    _check(_hostile_text(tx, data).encode("utf-8"))


def _update(**body: Any) -> Transaction:
    fields = {
        "round": 1,
        "base_model": "ab" * 32,
        "blob": "cd" * 32,
        "blob_size": 10,
        "num_samples": 5,
        "metrics": {"loss": "0.5"},
    }
    return make_tx(key_for("bob"), "ef" * 32, TxKind.UPDATE, {**fields, **body}, time_ms=1)


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"blob":"' + "cd" * 32, '"blob":"' + "cd" * 32 + "\\n"),  # a final newline
        ('"base_model":"' + "ab" * 32, '"base_model":"' + "ab" * 32 + "\\n"),
        ('"loss":"0.5"', '"loss":"0.5\\n"'),
        ('"loss"', '"loss\\n"'),
        ('"blob":"cd', '"blob":"CD'),  # upper-case hex
        ('"blob":"cd', '"blob":"c\\u0064'),  # an escape the canonical form does not use
        ('"blob_size":10', '"blob_size":10.0'),
        ('"blob_size":10', '"blob_size":true'),
        ('"blob_size":10', '"blob_size":0'),
        ('"round":1', '"round":1,"round":1'),  # a repeated key
        ('"time":1', '"time":-1'),
        ('"v":1', '"v":true'),
        ('"v":1', '"v":2'),
        ('"kind":"update"', '"kind":"updates"'),
    ],
)
def test_each_edit_of_a_stored_update_decides_as_the_exact_path(old: str, new: str) -> None:
    text = _text(_update())
    assert decode_stored(text.encode()) is not None and old in text
    _check(text.replace(old, new, 1).encode())


def test_a_trailing_newline_in_any_hex_field_is_refused() -> None:
    text = _text(_update())
    for path in (("sig",), ("tx", "chain"), ("tx", "nonce"), ("tx", "body", "blob")):
        edited = parse_canonical(text)
        where = edited
        for key in path[:-1]:
            where = where[key]
        where[path[-1]] += "\n"
        raw = canonical(edited)
        assert decode_stored(raw) is None, path
        with pytest.raises(EncodingError):
            Transaction.from_canonical(raw)


def test_a_repeated_update_in_an_aggregate_takes_the_exact_path() -> None:
    body = {
        "round": 1,
        "updates": ["ab" * 32, "ab" * 32],
        "rule": "fedavg",
        "params": {},
        "model": "cd" * 32,
        "model_size": 1,
    }
    unsigned = {
        "v": 1,
        "chain": "ef" * 32,
        "kind": "aggregate",
        "author": _update().author,
        "nonce": "00" * 16,
        "time": 1,
        "body": body,
    }
    raw = canonical({"tx": unsigned, "sig": "00" * 64})
    assert decode_stored(raw) is None
    _check(raw)


@pytest.mark.parametrize(
    ("text", "hex_only"),
    [("", True), ("0123456789abcdef", True), ("A", False), ("g", False), ("é", False)]
    + [("ab\n", False), ("a b", False), ("\x00", False), ("٣", False)],
)
def test_only_lower_hex(text: str, hex_only: bool) -> None:
    from bcfl_cli.protocol.encoding import only_lower_hex

    assert only_lower_hex(text) is hex_only


def test_a_transaction_read_fast_is_the_one_its_constructor_builds() -> None:
    """``from_canonical`` fills the frozen value's fields without its ``__init__``: every field
    is there, and the value equals (and hashes, encodes, prints as) the constructor's."""
    from dataclasses import fields

    raw = _text(_update()).encode()
    fast = decode_stored(raw)
    assert fast is not None
    read = Transaction.from_canonical(raw)
    built = Transaction(*fast[:7])
    assert {f.name for f in fields(Transaction)} <= read.__dict__.keys()
    assert read == built and repr(read) == repr(built)
    assert read.digest() == built.digest() and read.signed_text() == built.signed_text()
    assert read.parsed_body == built.parsed_body


@pytest.mark.parametrize("key", ["kind", "v", "nonce"])
def test_a_body_key_named_like_a_transaction_field_decides_as_the_exact_path(key: str) -> None:
    """The fast path picks its shape by the last ``"kind":"`` of the text; a metric of that
    name (it sorts before the transaction's own ``kind``) changes nothing."""
    body = {
        "round": 1,
        "base_model": "ab" * 32,
        "blob": "cd" * 32,
        "blob_size": 10,
        "num_samples": 5,
        "metrics": {key: "1"},
    }
    tx = make_tx(key_for("alice"), "ef" * 32, TxKind.UPDATE, body, time_ms=1, nonce="00" * 16)
    raw = _text(tx).encode()
    assert decode_stored(raw) is not None
    _check(raw)
    _check(raw.replace(b'"kind":"update"', b'"kind":"validation"'))
    _check(raw.replace(b'"' + key.encode() + b'":"1"', b'"' + key.encode() + b'":"update"'))


def test_a_body_map_with_its_keys_out_of_order_takes_the_exact_path() -> None:
    """``params`` and ``metrics`` are maps: their keys must come sorted for the text to be
    canonical, and re-encoding must not keep an order the exact path refuses (found by
    ``test_text_one_edit_away_decides_as_the_exact_path``)."""
    raw = (
        b'{"sig":"' + b"3f" * 64 + b'","tx":{"author":"did:key:'
        b'z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp","body":{"model":"'
        + b"0"
        * 64
        + b'","model_size":99999999959,"params":{"a00":"-0.000001","a":"0"},"round":1,'
        b'"rule":"a","updates":[]},"chain":"'
        + b"0" * 64
        + b'","kind":"aggregate","nonce":"'
        + b"0" * 32
        + b'","time":0,"v":1}}'
    )
    assert decode_stored(raw) is None
    assert _outcome(_exact, raw)[:2] == ("error", "NotCanonicalError")
    _check(raw)
    assert (
        decode_stored(raw.replace(b'{"a00":"-0.000001","a":"0"}', b'{"a":"0","a00":"-0.000001"}'))
        is not None
    )
