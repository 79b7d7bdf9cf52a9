"""Certificate pins on chain (issue 22): genesis member records, join requests, rotation."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcfl_cli.chain import ChainState
from bcfl_cli.chain.config import parse_document
from bcfl_cli.errors import VerificationError
from bcfl_cli.home import Home
from bcfl_cli.identity.tls_cert import sign_pin
from bcfl_cli.protocol.encoding import hash_object
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger
from tests.chain.factories import (
    FOUR,
    Consortium,
    did_for,
    key_for,
    make_consortium,
    make_document,
    make_genesis,
)


def fp(label: str) -> str:
    return hashlib.sha256(b"cert:" + label.encode()).hexdigest()


def pinned_document(initial: str, mode: str | None = "pinned") -> dict[str, Any]:
    document = make_document(FOUR, initial)
    if mode is not None:
        document["consortium"]["tls"] = mode
    for m in document["members"]:
        m["tls"] = {
            "fingerprint": fp(m["name"]),
            "sig": sign_pin(key_for(m["name"]), fp(m["name"])),
        }
    return document


def pinned_consortium(root: Path, mode: str | None = "pinned") -> Consortium:
    """``make_consortium`` with every founder's certificate pinned in the genesis."""
    home = Home.resolve(root)
    home.ensure()
    initial = BlobStore(home.blob_dir).put(b"initial-model:" + bytes(range(256)))
    document = pinned_document(initial, mode)
    genesis = make_genesis(document)
    ledger = Ledger.create(home, genesis, document)
    return Consortium(home, document, genesis, ledger, ChainState.from_genesis(genesis, document))


def test_genesis_without_tls_keeps_its_hash(tmp_path):
    """Absent fields are the old behaviour: the document (and so the chain id) is unchanged."""
    c = make_consortium(tmp_path)
    assert "tls" not in c.document["consortium"]
    assert all("tls" not in m for m in c.document["members"])
    assert parse_document(c.document).tls_mode is None
    assert c.state.tls_pins() == {}
    assert c.genesis.header.config == hash_object(c.document)


def test_genesis_pins_each_members_certificate(tmp_path):
    c = pinned_consortium(tmp_path)
    assert c.state.config.tls_mode == "pinned"
    assert c.state.tls_pins() == {did_for(n): fp(n) for n, _, _ in FOUR}
    assert c.state.tls_pinned_by(fp("bob")) == did_for("bob")


def test_a_pin_not_signed_by_its_member_is_refused():
    document = pinned_document("ab" * 32)
    # a founder pinning a certificate of its own choosing for bob: alice's signature
    document["members"][1]["tls"]["sig"] = sign_pin(key_for("alice"), fp("bob"))
    with pytest.raises(VerificationError, match=r"members\[1\]\.tls\.sig"):
        parse_document(document)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d["consortium"].update(tls="tofu"), "consortium.tls"),
        (lambda d: d["members"][0].update(tls={"fingerprint": "xx"}), r"members\[0\]\.tls"),
        (lambda d: d["members"][1].update(tls=d["members"][0]["tls"]), "tls"),
    ],
)
def test_malformed_tls_fields_are_refused(change, message):
    document = pinned_document("ab" * 32)
    change(document)
    with pytest.raises(VerificationError, match=message):
        parse_document(document)


def test_rotation_by_transaction(tmp_path):
    c = pinned_consortium(tmp_path)
    c.commit([c.tx("bob", TxKind.TLS_CERTIFICATE, {"fingerprint": fp("bob-2")})])
    assert c.state.tls_pins()[did_for("bob")] == fp("bob-2")
    assert c.state.tls_pinned_by(fp("bob")) is None  # the old certificate is pinned no more


@pytest.mark.parametrize(
    ("author", "fingerprint", "code"),
    [
        ("bob", "carol", "tls_pin_taken"),  # another member's certificate
        ("bob", "bob", "tls_pin_unchanged"),
        ("mallory", "mallory", "not_member"),
    ],
)
def test_rotation_refusals(tmp_path, author, fingerprint, code):
    c = pinned_consortium(tmp_path)
    tx = c.tx(author, TxKind.TLS_CERTIFICATE, {"fingerprint": fp(fingerprint)})
    with pytest.raises(VerificationError) as info:
        c.state.apply(c.next_block([tx]))
    assert info.value.code == code


def test_rotation_needs_the_pinned_mode(tmp_path):
    c = make_consortium(tmp_path)
    tx = c.tx("bob", TxKind.TLS_CERTIFICATE, {"fingerprint": fp("bob")})
    with pytest.raises(VerificationError) as info:
        c.state.apply(c.next_block([tx]))
    assert info.value.code == "tls_not_pinned"


def test_join_request_pins_on_admission(tmp_path):
    c = pinned_consortium(tmp_path)
    body = {"name": "erin", "roles": ["trainer"], "power": 0, "tls": fp("erin")}
    join = c.tx("erin", TxKind.JOIN_REQUEST, body)
    c.commit([join])
    assert did_for("erin") not in c.state.tls_pins()  # not before admission
    approve = {"member": did_for("erin"), "request": join.hash}
    c.commit(
        [c.tx("alice", TxKind.APPROVE_MEMBER, approve), c.tx("bob", TxKind.APPROVE_MEMBER, approve)]
    )
    assert c.state.tls_pins()[did_for("erin")] == fp("erin")


def test_join_request_with_a_taken_pin_is_refused(tmp_path):
    c = pinned_consortium(tmp_path)
    body = {"name": "erin", "roles": ["trainer"], "power": 0, "tls": fp("alice")}
    with pytest.raises(VerificationError) as info:
        c.state.apply(c.next_block([c.tx("erin", TxKind.JOIN_REQUEST, body)]))
    assert info.value.code == "tls_pin_taken"


def test_removed_member_pin_is_dropped(tmp_path):
    c = pinned_consortium(tmp_path)
    body = {"member": did_for("dave"), "reason": ""}
    c.commit([c.tx("alice", TxKind.REMOVE_MEMBER, body), c.tx("bob", TxKind.REMOVE_MEMBER, body)])
    assert did_for("dave") not in c.state.tls_pins()


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(st.sampled_from([n for n, _, _ in FOUR]), st.integers(0, 5)),
        min_size=1,
        max_size=12,
    )
)
def test_no_sequence_of_rotations_pins_one_certificate_twice(tmp_path_factory, steps):
    """Whatever the members rotate to, in whatever order and blocks, each pinned certificate
    belongs to one member, and a refused rotation changes nothing."""
    c = pinned_consortium(tmp_path_factory.mktemp("pins"))
    for name, label in steps:
        tx = c.tx(name, TxKind.TLS_CERTIFICATE, {"fingerprint": fp(f"cert-{label}")})
        before = c.state.tls_pins()
        try:
            c.commit([tx])
        except VerificationError as exc:
            assert exc.code in ("tls_pin_taken", "tls_pin_unchanged")
            assert c.state.tls_pins() == before
            continue
        assert c.state.tls_pins()[did_for(name)] == fp(f"cert-{label}")
        pins = list(c.state.tls_pins().values())
        assert len(pins) == len(set(pins)) == len(FOUR)


def test_the_trust_mode_changes_by_a_consortium_decision(tmp_path):
    """``tls_mode``: validators ask; at ``admission_approvals`` (2 here) the mode changes."""
    c = pinned_consortium(tmp_path)
    assert c.state.tls_mode == "pinned"
    c.commit([c.tx("alice", TxKind.TLS_MODE, {"mode": "ca"})])
    assert c.state.tls_mode == "pinned" and c.state.tls_votes["ca"] == {did_for("alice")}
    again = c.tx("alice", TxKind.TLS_MODE, {"mode": "ca"})
    with pytest.raises(VerificationError) as info:
        c.state.apply(c.next_block([again]))
    assert info.value.code == "duplicate_approval"
    c.commit([c.tx("bob", TxKind.TLS_MODE, {"mode": "ca"})])
    assert c.state.tls_mode == "ca" and dict(c.state.tls_votes) == {}
    # no pinning in ca mode; and asking for the mode in force is refused
    rotate = c.tx("bob", TxKind.TLS_CERTIFICATE, {"fingerprint": fp("bob-2")})
    with pytest.raises(VerificationError) as info:
        c.state.apply(c.next_block([rotate]))
    assert info.value.code == "tls_not_pinned"
    same = c.tx("carol", TxKind.TLS_MODE, {"mode": "ca"})
    with pytest.raises(VerificationError) as info:
        c.state.apply(c.next_block([same]))
    assert info.value.code == "tls_mode_unchanged"


def test_only_validators_vote_on_the_trust_mode(tmp_path):
    c = pinned_consortium(tmp_path)
    body = {"name": "erin", "roles": ["trainer"], "power": 0}
    join = c.tx("erin", TxKind.JOIN_REQUEST, body)
    c.commit([join])
    approve = {"member": did_for("erin"), "request": join.hash}
    c.commit(
        [
            c.tx("alice", TxKind.APPROVE_MEMBER, approve),
            c.tx("bob", TxKind.APPROVE_MEMBER, approve),
        ]
    )
    vote = c.tx("erin", TxKind.TLS_MODE, {"mode": "ca"})
    with pytest.raises(VerificationError) as info:
        c.state.apply(c.next_block([vote]))
    assert info.value.code == "not_validator"
