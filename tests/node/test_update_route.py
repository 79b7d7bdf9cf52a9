"""``POST /v1/updates``: an update transaction and its blob in one request, in-process.

What it replaces (``PUT`` of the blob's one chunk, then ``POST /v1/txs``) must hold: the blob is
kept only if it is the one the update names and the update passes the mempool's checks; every
refusal leaves the store and the mempool as they were.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.wire.refusal import Refusal
from tests.node._node_harness import URL, LocalNode, key, trained_update


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path / "node")
    harness.auto_mine = False
    yield harness
    harness.close()


def _signed(local: LocalNode, signer: nacl.signing.SigningKey) -> SignedClient:
    return SignedClient(signer, URL + "/v1", transport=local.client._transport, retries=0)


def _update(local: LocalNode, tmp_path: Path, name: str = "bob") -> tuple[Transaction, bytes]:
    return trained_update(local, tmp_path, name)


def _post(local: LocalNode, tx: Transaction, blob: str, signer: str = "bob") -> int:
    with _signed(local, key(signer)) as client:
        return client.post("/updates", json_body={"tx": tx.to_dict(), "blob": blob}).status_code


def _refused(local: LocalNode, tx: Transaction, blob: str) -> tuple[int, str]:
    with pytest.raises(Refusal) as info:
        _post(local, tx, blob)
    return info.value.status, info.value.code


def _timed_refusal(local: LocalNode, tx: Transaction, blob: bytes) -> tuple[int, str, float]:
    """The refusal of ``tx`` with ``blob``, and how long the node took to give it (seconds)."""
    started = time.monotonic()
    status, code = _refused(local, tx, base64.b64encode(blob).decode())
    return status, code, time.monotonic() - started


def test_an_update_and_its_blob_in_one_request(local: LocalNode, tmp_path: Path) -> None:
    local.mine()  # round 1 opens
    tx, blob = _update(local, tmp_path)
    encoded = base64.b64encode(blob).decode()
    assert _post(local, tx, encoded) == 202
    assert local.node.blobs.verify(tx.body["blob"]) and tx.hash in local.node.mempool
    assert _post(local, tx, encoded, signer="carol") == 202  # relayed again: still one
    assert len(local.node.mempool) == 1
    local.mine()
    assert tx.hash in local.state.seen_tx


def test_refused_updates_change_nothing(local: LocalNode, tmp_path: Path) -> None:
    local.mine()
    tx, blob = _update(local, tmp_path)
    digest = tx.body["blob"]
    other_bytes = base64.b64encode(blob[:-1] + bytes([blob[-1] ^ 1])).decode()
    assert _refused(local, tx, other_bytes) == (422, "hash_mismatch")
    assert _refused(local, tx, "not base64!") == (400, "malformed_body")
    assert _refused(local, tx, base64.b64encode(blob[:100]).decode()) == (422, "hash_mismatch")
    validation = make_tx(
        key("bob"),
        local.node.genesis_hash,
        TxKind.VALIDATION,
        {"update": "ab" * 32, "verdict": "accept", "reason": "ok", "detail": ""},
    )
    encoded = base64.b64encode(blob).decode()
    assert _refused(local, validation, encoded) == (400, "not_an_update")
    # signed by an outsider: the signature layer refuses it before anything is read
    with (
        _signed(local, nacl.signing.SigningKey(b"\x07" * 32)) as client,
        pytest.raises(Refusal) as outsider,
    ):
        client.post("/updates", json_body={"tx": tx.to_dict(), "blob": encoded})
    assert outsider.value.status == 403
    assert not local.node.blobs.has(digest) and len(local.node.mempool) == 0


def _ahead_update(tmp_path: Path) -> tuple[Transaction, bytes]:
    """An update for round 1 from a node of the same genesis one block further."""
    ahead = LocalNode(tmp_path / "ahead")
    try:
        ahead.mine()
        return _update(ahead, tmp_path)
    finally:
        ahead.close()


def test_an_update_the_mempool_refuses_leaves_no_blob(
    local: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bcfl_cli.node.app.NEXT_ROUND_HOLD_S", 0.3)
    tx, blob = _ahead_update(tmp_path)
    status, code, took = _timed_refusal(local, tx, blob)  # no round open here
    assert (status, code) == (422, "wrong_round")
    assert 0.3 <= took < 10  # held for the round, then refused
    assert not local.node.blobs.has(tx.body["blob"]) and len(local.node.mempool) == 0


@pytest.mark.parametrize("route", ["/updates", "/txs"])
def test_an_update_for_the_next_round_waits_for_this_node_to_open_it(
    local: LocalNode, tmp_path: Path, route: str
) -> None:
    # The peer committed the block opening round 1 just before this node: its update waits
    # here for the same commit instead of being refused.
    tx, blob = _ahead_update(tmp_path)
    body = {"tx": tx.to_dict(), "blob": base64.b64encode(blob).decode()}
    if route == "/txs":
        del body["blob"]
    opener = threading.Timer(0.3, local.mine)
    opener.start()
    try:
        with _signed(local, key("bob")) as client:
            assert client.post(route, json_body=body).status_code == 202
    finally:
        opener.join()
    assert local.state.round.number == 1 and tx.hash in local.node.mempool
    assert local.node.blobs.has(tx.body["blob"]) == (route == "/updates")


def test_a_blob_over_the_inline_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bcfl_cli.node.app.MAX_INLINE_BLOB_BYTES", 1000)
    small = LocalNode(tmp_path / "small")
    try:
        small.auto_mine = False
        small.mine()
        tx, blob = _update(small, tmp_path)
        assert len(blob) > 1000
        assert _refused(small, tx, base64.b64encode(blob).decode()) == (413, "blob_too_large")
        assert not small.node.blobs.has(tx.body["blob"]) and len(small.node.mempool) == 0
    finally:
        small.close()


def test_held_updates_are_bounded_in_number(
    local: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bcfl_cli.node.app.NEXT_ROUND_HOLD_S", 30.0)
    monkeypatch.setattr("bcfl_cli.node.app.MAX_HELD_UPDATES", 0)  # every slot taken
    tx, blob = _ahead_update(tmp_path)
    status, code, took = _timed_refusal(local, tx, blob)
    assert (status, code) == (422, "wrong_round")
    assert took < 10  # refused at once, not after the 30 s hold


def test_a_forged_update_for_the_next_round_is_not_held(
    local: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("bcfl_cli.node.app.NEXT_ROUND_HOLD_S", 30.0)
    tx, blob = _ahead_update(tmp_path)
    wire = tx.to_dict()
    sig = wire["sig"]
    wire["sig"] = sig[:-1] + ("0" if sig[-1] != "0" else "1")  # no longer the author's
    body = {"tx": wire, "blob": base64.b64encode(blob).decode()}
    started = time.monotonic()
    with pytest.raises(Refusal) as info, _signed(local, key("bob")) as client:
        client.post("/updates", json_body=body)
    assert 400 <= info.value.status < 500
    assert time.monotonic() - started < 10  # refused at once, not after the 30 s hold
    assert not local.node.blobs.has(tx.body["blob"]) and len(local.node.mempool) == 0


def test_one_trainer_cannot_take_every_hold_for_the_next_round() -> None:
    """The holds for next-round updates were bounded in all (32), not per author: one trainer
    sending 32 distinct genuine updates for the next round kept every slot, and the other
    trainers' updates were refused at once (``wrong_round``) while the chain was a block
    behind. Each author now holds at most ``MAX_HELD_PER_AUTHOR`` of them."""
    import asyncio
    from types import SimpleNamespace

    from bcfl_cli.node.app import MAX_HELD_PER_AUTHOR, MAX_HELD_UPDATES, NextRoundHold

    opened = asyncio.Event()
    waits: list[int] = []

    class Chain:
        state = SimpleNamespace(
            round=SimpleNamespace(number=0),
            member=lambda _did: SimpleNamespace(is_trainer=True),
        )

        async def wait_for_round(self, number: int, timeout_s: float) -> bool:
            waits.append(number)
            await opened.wait()
            return True

    def update(author: str, n: int) -> object:
        return SimpleNamespace(
            kind=TxKind.UPDATE,
            body={"round": 1, "n": n},
            author=author,
            signature_valid=lambda: True,
        )

    async def scenario() -> tuple[int, int]:
        hold = NextRoundHold(Chain())  # type: ignore[arg-type]
        greedy = [
            asyncio.create_task(hold.wait_for(update("greedy", n)))  # type: ignore[arg-type]
            for n in range(MAX_HELD_UPDATES + 8)
        ]
        await asyncio.sleep(0.05)
        by_greedy = len(waits)
        other = asyncio.create_task(hold.wait_for(update("other", 0)))  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        held_other = len(waits) - by_greedy
        opened.set()
        await asyncio.gather(*greedy, other)
        assert hold.held == 0
        return by_greedy, held_other

    by_greedy, held_other = asyncio.run(scenario())
    assert by_greedy <= MAX_HELD_PER_AUTHOR
    assert held_other == 1
