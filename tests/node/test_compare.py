"""``verify-chain --against``: every answer of a peer, honest or not, ends in a verdict.

The peer is in memory (httpx MockTransport) and serves another store built by the same test
factories: the same genesis and keys, so a peer chain that differs at a height carries a valid
certificate (a fork), and one that is longer carries valid blocks past the local head.
"""

from __future__ import annotations

import json
import shutil
from typing import Any

import httpx
import pytest

from bcfl_cli.errors import VerificationError
from bcfl_cli.home import Home
from bcfl_cli.node.compare import COMPARE_MAX_REQUESTS, compare_with_peer
from bcfl_cli.protocol.block import CommitCertificate
from bcfl_cli.protocol.encoding import canonical
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify.chain import Verified, verify_chain_state
from tests.chain.factories import did_for, drop_triggers, make_consortium, realistic_chain

URL = "http://peer.test"


def _peer(ledger: Ledger, *, height: Any = None, edit=None) -> httpx.MockTransport:
    """A node serving ``ledger``'s genesis, status and blocks; ``edit`` may rewrite blocks."""

    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/genesis":
            body: Any = {"block": ledger.block(0).to_dict(), "document": ledger.document}
        elif path == "/v1/status":
            body = {"height": ledger.height if height is None else height}
        elif path == "/v1/blocks":
            start = int(request.url.params["start"])
            blocks = (
                [b.to_dict() for b in ledger.blocks(start, start)] if start <= ledger.height else []
            )
            if edit is not None:
                blocks = [edit(b) for b in blocks]
            body = {"blocks": blocks}
        else:
            return httpx.Response(404)
        return httpx.Response(200, content=canonical(body))

    return httpx.MockTransport(handle)


def _verified(ledger: Ledger) -> Verified:
    verified = verify_chain_state(ledger, workers=1)
    assert verified.report.ok
    return verified


def _compare(ledger: Ledger, transport: httpx.BaseTransport) -> tuple[str | None, dict]:
    verified = _verified(ledger)
    try:
        compare_with_peer(URL, ledger, verified, transport=transport)
    except VerificationError as exc:
        return exc.code, verified.report.anchors[-1]
    return None, verified.report.anchors[-1]


@pytest.fixture
def chains(tmp_path):
    """The local store (height 5) and a peer's (the same 5 blocks, then 2 more)."""
    peer = realistic_chain(tmp_path / "peer")
    for name in ("alice", "bob"):
        peer.commit(
            [peer.tx(name, TxKind.REMOVE_MEMBER, {"member": did_for("erin"), "reason": ""})]
        )
    peer.ledger.close()
    shutil.copytree(tmp_path / "peer", tmp_path / "local")
    conn = drop_triggers(tmp_path / "local" / "chain.sqlite")
    conn.execute("DELETE FROM txs WHERE height > 5")
    conn.execute("DELETE FROM blocks WHERE height > 5")
    conn.close()
    with (
        Ledger.open(Home.resolve(tmp_path / "local")) as local,
        Ledger.open(peer.home) as remote,
    ):
        yield local, remote


def test_same_chain_agrees(chains):
    local, _ = chains
    code, row = _compare(local, _peer(local))
    assert code is None and row["ok"] is True and row["height"] == 5 and row["peer_height"] == 5


def test_a_peer_behind_agrees_at_its_head(chains):
    local, peer = chains
    code, row = _compare(peer, _peer(local))
    assert code is None and row["height"] == 5 and row["peer_height"] == 5


def test_a_store_behind_the_peer_fails(chains):
    local, peer = chains
    code, row = _compare(local, _peer(peer))
    assert code == "behind_peer" and row["ok"] is False and row["peer_height"] == 7


def test_a_fork_with_valid_certificates_fails(tmp_path):
    """Same genesis, same keys, a different block 1: the validators signed both."""
    a = make_consortium(tmp_path / "a")
    b = make_consortium(tmp_path / "b")
    a.commit(
        [a.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})]
    )
    b.commit(
        [b.tx("frank", TxKind.JOIN_REQUEST, {"name": "frank", "roles": ["trainer"], "power": 0})]
    )
    assert a.genesis.hash == b.genesis.hash
    code, row = _compare(a.ledger, _peer(b.ledger))
    assert code == "fork_with_peer" and row["height"] == 1
    a.ledger.close()
    b.ledger.close()


def _no_quorum(block: dict[str, Any]) -> dict[str, Any]:
    """The block with one signature of its certificate kept (and its txs changed)."""
    if block["commit"] is None:
        return block
    cert = CommitCertificate.from_dict(block["commit"])
    block = {**block, "commit": {**block["commit"], "sigs": block["commit"]["sigs"][:1]}}
    assert cert.height == block["header"]["height"]
    return block


def test_a_peer_lying_past_the_head_is_unverifiable(chains):
    local, peer = chains
    code, _ = _compare(local, _peer(peer, edit=_no_quorum))
    assert code == "peer_unverifiable"
    code, _ = _compare(local, _peer(local, height=9))  # claims blocks it lacks
    assert code == "peer_unverifiable"


def test_a_different_block_without_a_valid_certificate_is_unverifiable(chains):
    local, _ = chains

    def rewrite(block: dict[str, Any]) -> dict[str, Any]:
        header = {**block["header"], "time": block["header"]["time"] + 1}
        return {**block, "header": header}

    code, row = _compare(local, _peer(local, edit=rewrite))
    assert code == "peer_unverifiable" and row["ok"] is False


def test_another_consortium_fails(tmp_path, chains):
    local, _ = chains
    other = make_consortium(tmp_path / "other", initial_bytes=b"another consortium")
    code, _ = _compare(local, _peer(other.ledger))
    assert code == "peer_genesis_differs"
    other.ledger.close()


@pytest.mark.parametrize(
    "answer",
    [
        b"",
        b"[]",
        b"[" * 10_000,
        b'{"height": 1.5}',
        b'{"height": -1}',
        b'{"height": "5"}',
        b'{"blocks": [{"header": 1}]}',
        b'{"block": {}, "document": []}',
        json.dumps({"height": 2**70}).encode(),
    ],
    ids=lambda answer: repr(answer[:24]),
)
def test_malformed_answers_are_a_verdict(chains, answer):
    local, _ = chains
    honest = _peer(local)

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path in ("/v1/status", "/v1/blocks") or b"block" in answer:
            return httpx.Response(200, content=answer)
        return honest.handle_request(request)

    code, row = _compare(local, httpx.MockTransport(handle))
    assert code == "peer_unverifiable" and row["ok"] is False


def test_errors_and_refusals_are_a_verdict(chains):
    local, _ = chains
    for status in (404, 500, 429):
        code, _ = _compare(local, httpx.MockTransport(lambda r, s=status: httpx.Response(s)))
        assert code == "peer_unverifiable"

    def boom(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    code, _ = _compare(local, httpx.MockTransport(boom))
    assert code == "peer_unverifiable"


def test_a_comparison_makes_at_most_the_documented_requests(chains):
    """docs/OPERATIONS.md: `verify-chain --against` makes 4 requests at most; the longest path
    (a store behind the peer: genesis, status, the common block, the one after it) makes 4."""
    local, peer = chains
    made: dict[str, int] = {}
    for name, store, served in (
        ("same", local, local),
        ("ahead", peer, local),
        ("behind", local, peer),
    ):
        honest = _peer(served)
        count = 0

        def handle(request: httpx.Request, honest=honest) -> httpx.Response:
            nonlocal count
            count += 1
            return honest.handle_request(request)

        _compare(store, httpx.MockTransport(handle))
        made[name] = count
    assert max(made.values()) == made["behind"] == COMPARE_MAX_REQUESTS, made
