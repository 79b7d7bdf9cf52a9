"""Typed transaction bodies: each valid body parses to its kind's value and serialises back to
the very same dict (so the same canonical bytes and hash); a bad body is an EncodingError at
the boundary and a ``malformed_body`` verdict in the chain rules, never a KeyError."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, get_args

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import EncodingError, VerificationError
from bcfl_cli.protocol.block import BlockHeader
from bcfl_cli.protocol.crypto import Domain, sign_digest
from bcfl_cli.protocol.encoding import canonical, hash_object, parse_json
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.protocol.txbodies import OPTIONAL_BODY_FIELDS, OpenRoundBody, TxBody, parse_body
from tests.chain.factories import did_for, key_for, make_consortium
from tests.protocol.test_protocol_properties import BODIES, transactions, u53

fast = settings(max_examples=60, deadline=None)

BODY_CLASSES = get_args(TxBody)


def test_every_kind_has_exactly_one_body_class() -> None:
    kinds = [cls.KIND for cls in BODY_CLASSES]
    assert sorted(kinds) == sorted(TxKind) and len(set(kinds)) == len(kinds)


@st.composite
def kinds_and_bodies(draw: st.DrawFn) -> tuple[TxKind, dict[str, Any]]:
    kind = draw(st.sampled_from(list(TxKind)))
    body = draw(BODIES[kind])
    if kind is TxKind.OPEN_ROUND and draw(st.booleans()):
        body["deadline_time"] = draw(u53.filter(lambda t: t >= 1))
    return kind, body


@fast
@given(kinds_and_bodies())
def test_parse_then_to_json_gives_back_the_body(kind_body: tuple[TxKind, dict[str, Any]]) -> None:
    kind, body = kind_body
    parsed = parse_body(kind, body)
    assert type(parsed).KIND is kind
    assert parsed.to_json() == body
    assert canonical(parsed.to_json()) == canonical(body)
    assert hash_object(parsed.to_json()) == hash_object(body)
    assert parse_body(kind, parsed.to_json()) == parsed  # frozen values compare by content


@fast
@given(transactions())
def test_a_transaction_from_the_wire_carries_its_parsed_body(tx: Transaction) -> None:
    back = Transaction.from_dict(parse_json(canonical(tx.to_dict())))
    assert "_parsed_body" in back.__dict__  # parsed once, at the boundary
    assert back.parsed_body.to_json() == tx.body and back.hash == tx.hash


@fast
@given(kinds_and_bodies(), st.data())
def test_a_body_without_a_field_or_with_an_extra_one_is_refused(
    kind_body: tuple[TxKind, dict[str, Any]], data: st.DataObject
) -> None:
    kind, body = kind_body
    key = data.draw(st.sampled_from(sorted(body)))
    if key not in OPTIONAL_BODY_FIELDS.get(kind, {}):  # deadline_time, a join's tls
        with pytest.raises(EncodingError):
            parse_body(kind, {k: v for k, v in body.items() if k != key})
    with pytest.raises(EncodingError):
        parse_body(kind, {**body, "surplus": 1})
    with pytest.raises(EncodingError):
        parse_body(kind, [body])


def test_open_round_leaves_an_absent_deadline_time_out() -> None:
    body = {"round": 1, "base_model": "ab" * 32, "deadline_height": 7}
    parsed = parse_body(TxKind.OPEN_ROUND, body)
    assert parsed == OpenRoundBody(1, "ab" * 32, 7, None)
    assert "deadline_time" not in parsed.to_json()


def _signed_with_body(tx: Transaction, body: dict[str, Any], name: str) -> Transaction:
    """``tx`` with another body, correctly signed, built without ``from_dict``'s checks."""
    unsigned = dataclasses.replace(tx, body=body, signature="")
    return dataclasses.replace(
        unsigned, signature=sign_digest(key_for(name), Domain.TX, unsigned.hash)
    )


def test_a_malformed_body_in_a_block_is_a_verdict_not_a_key_error(tmp_path: Path) -> None:
    c = make_consortium(tmp_path)
    good = c.tx("alice", TxKind.REMOVE_MEMBER, {"member": did_for("dave"), "reason": "x"})
    bad = _signed_with_body(good, {"member": did_for("dave")}, "alice")
    assert bad.signature_valid()
    with pytest.raises(EncodingError):
        _ = bad.parsed_body
    block = c.next_block([bad])
    with pytest.raises(VerificationError) as caught:
        c.state.apply(block)
    assert caught.value.code == "malformed_body" and caught.value.tx_hash == bad.hash


@fast
@given(transactions(), st.sampled_from(["sig", "nonce", "chain", "author"]))
def test_a_trailing_newline_in_a_fixed_form_field_is_refused(tx: Transaction, field: str) -> None:
    """Python's ``$`` also matches before a final newline, and ``bytes.fromhex`` skips
    whitespace: ``sig + "\\n"`` once passed the checks and verified, then read back from the
    store at another offset, so every honest copy of a committed block failed (found in review
    for issue 21). Fixed-form fields end exactly where their pattern does."""
    data = tx.to_dict()
    where = data if field == "sig" else data["tx"]
    if not isinstance(where.get(field), str):
        return
    where[field] += "\n"
    with pytest.raises(EncodingError):
        Transaction.from_dict(data)


@pytest.mark.parametrize(
    ("kind", "field"),
    [(TxKind.UPDATE, "blob"), (TxKind.UPDATE, "base_model"), (TxKind.AGGREGATE, "model")],
)
@fast
@given(data=st.data())
def test_a_trailing_newline_in_a_body_hash_is_refused(
    kind: TxKind, field: str, data: st.DataObject
) -> None:
    body = dict(data.draw(BODIES[kind]))
    assert isinstance(body[field], str)
    body[field] += "\n"
    with pytest.raises(EncodingError):
        parse_body(kind, body)


def test_the_hex_and_name_checks_end_at_the_end() -> None:
    from bcfl_cli.consortium.config import MEMBER_NAME_RE
    from bcfl_cli.protocol.encoding import is_hash_hex, is_signature_hex

    assert is_hash_hex("ab" * 32) and not is_hash_hex("ab" * 32 + "\n")
    assert is_signature_hex("ab" * 64) and not is_signature_hex("ab" * 64 + "\n")
    assert MEMBER_NAME_RE.match("alice") and not MEMBER_NAME_RE.match("alice\n")


@pytest.mark.parametrize("spelling", [True, 1.0])
def test_a_version_spelled_as_another_type_is_refused(tmp_path: Path, spelling: Any) -> None:
    """``True == 1`` and ``1.0 == 1`` in Python: the version field is the integer 1 and
    nothing that merely compares equal to it (found in review, issue 21)."""
    c = make_consortium(tmp_path)
    tx = c.tx("alice", TxKind.REMOVE_MEMBER, {"member": did_for("dave"), "reason": "x"})
    data = tx.to_dict()
    data["tx"]["v"] = spelling
    with pytest.raises(EncodingError):
        Transaction.from_dict(data)
    header = c.next_block([tx]).header.to_dict()
    header["v"] = spelling
    with pytest.raises(EncodingError):
        BlockHeader.from_dict(header)
