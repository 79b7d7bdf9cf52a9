"""``/v1/stream``: a member's consensus messages and updates on one WebSocket.

The opening is a member's signed request, refused like any other; each frame is one message,
checked as ``POST /v1/consensus`` or ``POST /v1/updates`` checks its body; a bad frame, a
consensus message from a non-validator, a sender no longer a member or over its rate closes the
stream and what came before it stands. The peer client sends on the stream, and by POST where it
cannot.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import logging
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from bcfl_cli.node import app as app_module
from bcfl_cli.node.app import MAX_CONSENSUS_BODY
from bcfl_cli.node.limits import NodeLimits
from bcfl_cli.node.peers import (
    CONSENSUS_PATH,
    PEER_STREAM_PATH,
    STREAM_REFUSED_RETRY_S,
    Peers,
)
from bcfl_cli.protocol.block import Vote, VoteType
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.wire.httpsig import sign_request
from tests.node._node_harness import URL, LocalNode, did, key, served, trained_update

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient, WebSocketDenialResponse
    from starlette.websockets import WebSocketDisconnect

STREAM_URL = URL + PEER_STREAM_PATH


@pytest.fixture
def local(tmp_path: Path) -> Iterator[LocalNode]:
    harness = LocalNode(tmp_path / "node")
    yield harness
    harness.close()


@pytest.fixture
def received(local: LocalNode, monkeypatch: pytest.MonkeyPatch) -> list[tuple[Any, Any]]:
    """What reaches the consensus engine."""
    seen: list[tuple[Any, Any]] = []
    monkeypatch.setattr(local.node.driver, "on_message", lambda p, v: seen.append((p, v)))
    return seen


def _vote(local: LocalNode, name: str = "bob", height: int = 5, chain: str | None = None) -> bytes:
    vote = Vote(
        chain or local.node.genesis_hash, height, 0, VoteType.PREVOTE, "ab" * 32, did(name)
    ).signed(key(name))
    return json.dumps({"vote": vote.to_dict()}).encode()


def _opening(signer: nacl.signing.SigningKey, url: str = STREAM_URL) -> dict[str, str]:
    return sign_request(signer, "GET", url, {}, None)


def _denied(client: TestClient, headers: dict[str, str]) -> tuple[int, str]:
    with (
        pytest.raises(WebSocketDenialResponse) as info,
        client.websocket_connect(PEER_STREAM_PATH, headers=headers),
    ):
        pass
    return info.value.status_code, info.value.json()["error"]


def _closed(ws: Any) -> tuple[int, str]:
    """The close the server sent (its code, and the refusal code that starts its reason)."""
    with pytest.raises(WebSocketDisconnect) as info:
        ws.receive_bytes()
    return info.value.code, (info.value.reason or "").split(":", 1)[0]


def test_a_validators_messages_reach_the_engine_in_order(
    local: LocalNode, received: list[tuple[Any, Any]]
) -> None:
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        for height in (5, 6, 7):
            ws.send_bytes(_vote(local, height=height))
        # a vote relayed from another validator: each message carries its own signature
        ws.send_bytes(_vote(local, name="carol", height=8))
    assert [v.height for _, v in received] == [5, 6, 7, 8]
    assert [v.validator for _, v in received] == [did("bob")] * 3 + [did("carol")]


def test_the_opening_is_refused_like_any_request(local: LocalNode) -> None:
    client = local.client
    assert _denied(client, {}) == (401, "missing_signature")
    outsider = nacl.signing.SigningKey(b"\x07" * 32)
    assert _denied(client, _opening(outsider)) == (403, "not_member")
    other_node = _opening(key("bob"), "http://elsewhere:80" + PEER_STREAM_PATH)
    assert _denied(client, {**other_node, "host": "elsewhere"}) == (401, "wrong_authority")
    assert _denied(client, other_node) == (401, "bad_signature")  # signed for another host
    wrong_path = _opening(key("bob"), URL + "/v1/consensus")
    assert _denied(client, wrong_path)[0] == 401
    headers = _opening(key("bob"))
    with client.websocket_connect(PEER_STREAM_PATH, headers=headers):
        pass
    assert _denied(client, headers) == (401, "replay")  # the same signed opening again


def test_a_member_that_is_not_a_validator_sends_no_consensus_message(
    local: LocalNode, received: list[tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    validators = frozenset(did(n) for n in ("alice", "carol", "dave"))
    monkeypatch.setattr(local.node.state, "validator_set", validators)
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        ws.send_bytes(_vote(local, name="carol", height=5))  # even a validator's, relayed
        assert _closed(ws) == (1008, "not_validator")
    assert received == []


def test_a_sender_no_longer_a_member_is_cut_off(
    local: LocalNode, received: list[tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        ws.send_bytes(_vote(local, height=5))
        time.sleep(0.2)
        member = local.node.state.member
        monkeypatch.setattr(
            local.node.state, "member", lambda d: None if d == did("bob") else member(d)
        )
        ws.send_bytes(_vote(local, height=6))
        assert _closed(ws) == (1008, "not_member")
    assert [v.height for _, v in received] == [5]


@pytest.mark.parametrize(
    ("frame", "code", "reason"),
    [
        ("text", 1003, "binary_only"),
        (b"not json", 1007, "malformed_body"),
        (b'{"vote": {}}', 1007, "malformed_body"),
        (b'{"vote": {}, "extra": 1}', 1007, "malformed_body"),
        ("other chain", 1007, "wrong_chain"),
        ("forged", 1007, "malformed_body"),
    ],
)
def test_a_bad_frame_closes_the_stream_and_changes_nothing(
    local: LocalNode,
    received: list[tuple[Any, Any]],
    frame: str | bytes,
    code: int,
    reason: str,
) -> None:
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        ws.send_bytes(_vote(local, height=5))
        if frame == "text":
            ws.send_text(_vote(local, height=6).decode())
        elif frame == "other chain":
            ws.send_bytes(_vote(local, height=6, chain="cd" * 32))
        elif frame == "forged":  # a vote whose fields do not parse as a signed vote's
            body = json.loads(_vote(local, height=6))
            body["vote"]["height"] = -1
            ws.send_bytes(json.dumps(body).encode())
        else:
            assert isinstance(frame, bytes)
            ws.send_bytes(frame)
        assert _closed(ws) == (code, reason)
    assert [v.height for _, v in received] == [5]  # what came before the bad frame stands
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        ws.send_bytes(_vote(local, height=7))
    assert [v.height for _, v in received] == [5, 7]


def test_a_sender_removed_from_the_validators_is_cut_off(
    local: LocalNode, received: list[tuple[Any, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        ws.send_bytes(_vote(local, height=5))
        ws.send_bytes(_vote(local, height=6))
        time.sleep(0.2)  # the first two are read while bob is still a validator
        validators = frozenset(did(n) for n in ("alice", "carol", "dave"))
        monkeypatch.setattr(local.node.state, "validator_set", validators)
        ws.send_bytes(_vote(local, height=7))
        assert _closed(ws) == (1008, "not_validator")
    assert [v.height for _, v in received] == [5, 6]


def test_each_message_counts_against_the_senders_rate(
    local: LocalNode, received: list[tuple[Any, Any]]
) -> None:
    node = local.node
    node.options = dataclasses.replace(node.options, limits=NodeLimits(rate_per_s=0.001, burst=4.0))
    with (
        TestClient(node.http_app(), base_url=URL) as client,
        client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws,
    ):  # the opening takes one of the four
        for height in (5, 6, 7, 8):
            ws.send_bytes(_vote(local, height=height))
        assert _closed(ws) == (1013, "rate_limited")
    assert [v.height for _, v in received] == [5, 6, 7]


def test_a_new_stream_of_the_same_validator_replaces_the_old(
    local: LocalNode, received: list[tuple[Any, Any]]
) -> None:
    client = local.client
    with client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as old:
        old.send_bytes(_vote(local, height=5))
        with client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as new:
            assert _closed(old)[0] == 1000
            new.send_bytes(_vote(local, height=6))
    assert [v.height for _, v in received] == [5, 6]


# --- over real sockets --------------------------------------------------------------------------
def _app_at(local: LocalNode) -> Any:
    def app_at(port: int) -> ASGIApp:
        local.node.options = dataclasses.replace(local.node.options, host="127.0.0.1", port=port)
        return local.node.http_app()

    return app_at


async def _until(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # bounded: timeout_s
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_the_peer_client_sends_consensus_on_the_stream(
    local: LocalNode, received: list[tuple[Any, Any]]
) -> None:
    async def scenario() -> None:
        async with served(_app_at(local)) as url:
            peers = Peers(key("bob"), [url], self_url="http://me:1")
            peer = peers.peers[url]
            peers.start_outboxes()
            try:
                for height in (5, 6, 7):
                    peers.broadcast(CONSENSUS_PATH, json.loads(_vote(local, height=height)))
                await _until(lambda: len(received) == 3)
                assert peer.streamed == 3 and peer.stream is not None
                # a frame the node refuses ends the stream; the next message still arrives
                # (by POST until the stream is opened again)
                peers.broadcast(CONSENSUS_PATH, {"vote": {}})
                await _until(lambda: peer.stream is None)
                peers.broadcast(CONSENSUS_PATH, json.loads(_vote(local, height=8)))
                await _until(lambda: len(received) == 4)
            finally:
                await peers.close()
                await local.node.peers.close()  # it checked the URL the stream named
            assert peer.stream is None
        assert [v.height for _, v in received] == [5, 6, 7, 8]

    asyncio.run(scenario())


def test_a_peer_without_the_stream_gets_posts() -> None:
    posted: list[bytes] = []

    async def consensus(request: Request) -> JSONResponse:
        posted.append(await request.body())
        return JSONResponse({"accepted": True}, status_code=202)

    older = Starlette(routes=[Route(CONSENSUS_PATH, consensus, methods=["POST"])])

    async def scenario() -> None:
        async with served(lambda _port: older) as url:
            peers = Peers(key("bob"), [url], self_url="http://me:1")
            peer = peers.peers[url]
            peers.start_outboxes()
            try:
                began = time.monotonic()
                peers.broadcast(CONSENSUS_PATH, {"vote": 1})
                peers.broadcast(CONSENSUS_PATH, {"vote": 2})
                await _until(lambda: len(posted) == 2)
            finally:
                await peers.close()
        assert peer.streamed == 0
        # not asked again for a while: one refused opening, not one per message
        assert peer.stream_retry_at >= began + STREAM_REFUSED_RETRY_S - 1
        assert [json.loads(b)["vote"] for b in posted] == [1, 2]

    asyncio.run(scenario())


def test_an_oversized_frame_is_refused_by_the_server(
    local: LocalNode, received: list[tuple[Any, Any]]
) -> None:
    """A frame whose header announces more than a POST body may hold: closed with 1009 before
    its body is read (raw socket: a client library would still be sending it)."""

    async def scenario() -> bytes:
        async with served(_app_at(local)) as url:
            target = url + PEER_STREAM_PATH
            authority = target.split("/")[2]
            signed = _opening(key("bob"), target)
            reader, writer = await asyncio.open_connection(*authority.split(":"))
            lines = [
                f"GET {PEER_STREAM_PATH} HTTP/1.1",
                f"Host: {authority}",
                "Upgrade: websocket",
                "Connection: Upgrade",
                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
                "Sec-WebSocket-Version: 13",
                *(f"{k}: {v}" for k, v in signed.items()),
            ]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert head.startswith(b"HTTP/1.1 101"), head
            size = MAX_CONSENSUS_BODY + 1  # binary, masked, 64-bit length, then 1 KiB of it
            writer.write(bytes([0x82, 0x80 | 127]) + size.to_bytes(8, "big") + bytes(4))
            writer.write(b"x" * 1024)
            frame = await asyncio.wait_for(reader.read(64), 10)
            writer.close()
            await local.node.peers.close()
            return frame

    frame = asyncio.run(scenario())
    assert frame[0] == 0x88  # a close frame
    assert int.from_bytes(frame[2:4], "big") == 1009  # "message too big"
    assert received == []


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
_VOTE_FIELDS = ("v", "chain", "height", "round", "type", "block", "validator", "sig")


@st.composite
def _frames(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["bytes", "json", "message", "vote field"]))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "json":
        return json.dumps(draw(_JSON)).encode()
    if kind == "message":
        keys = st.sampled_from(["proposal", "vote", "tx", "blob"])
        return json.dumps(draw(st.dictionaries(keys, _JSON, max_size=3))).encode()
    return b"vote field"  # filled in by the test: one field of a valid vote replaced


@settings(
    max_examples=80,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(frame=_frames(), field=st.sampled_from(_VOTE_FIELDS), value=_JSON)
def test_any_frame_is_taken_whole_or_closes_the_stream(
    local: LocalNode,
    received: list[tuple[Any, Any]],
    frame: bytes,
    field: str,
    value: Any,
) -> None:
    """Whatever a validator sends, the engine gets a well-formed message for this chain or
    nothing, the stream closes with a refusal code or stays open, and the node is unchanged."""
    received.clear()
    if frame == b"vote field":
        body = json.loads(_vote(local, height=9))
        body["vote"][field] = value
        frame = json.dumps(body).encode()
    before = (local.node.state.height, len(local.node.mempool))
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        ws.send_bytes(frame)
        ws.send_bytes(_vote(local, height=10))  # a sentinel: delivered only if still open
        ws.close()
    # an exception in the handler would have been raised by the test client on the way out
    assert (local.node.state.height, len(local.node.mempool)) == before
    # taken whole (then the sentinel too), or the stream closed (then not the sentinel either)
    assert len(received) in (0, 2)
    for proposal, vote in received:
        assert (proposal or vote).chain == local.node.genesis_hash
    if received:
        assert received[1][1].height == 10


# --- updates on the stream ----------------------------------------------------------------------
def _update_frame(tx: Transaction, blob: bytes, seen: str | None = None) -> bytes:
    payload = {"tx": tx.to_dict(), "blob": base64.b64encode(blob).decode("ascii")}
    return json.dumps({"update": payload, "seen": seen}).encode()


def _until_sync(condition: Any, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():  # bounded: timeout_s
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _opened(local: LocalNode, tmp_path: Path) -> tuple[Transaction, bytes]:
    """Round 1 opened on ``local`` (commits by hand from now on) and bob's update for it."""
    local.auto_mine = False
    local.mine()
    return trained_update(local, tmp_path)


def test_a_streamed_update_is_admitted_with_its_blob(local: LocalNode, tmp_path: Path) -> None:
    tx, blob = _opened(local, tmp_path)
    node = local.node
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        ws.send_bytes(_update_frame(tx, blob))
        _until_sync(lambda: tx.hash in node.mempool)
        ws.send_bytes(_update_frame(tx, blob))  # again (a relay): taken once
    assert node.blobs.verify(tx.body["blob"])
    assert len(node.mempool) == 1


@pytest.mark.parametrize(
    ("spoil", "code", "reason"),
    [
        ("flip a byte", 1007, "hash_mismatch"),
        ("truncate", 1007, "hash_mismatch"),
        ("bad base64", 1007, "malformed_body"),
        ("not an update", 1007, "not_an_update"),
        ("extra field", 1007, "malformed_body"),
        ("no room", 1013, "too_many_updates"),
    ],
)
def test_a_bad_update_frame_closes_the_stream_and_keeps_nothing(
    local: LocalNode,
    tmp_path: Path,
    received: list[tuple[Any, Any]],
    monkeypatch: pytest.MonkeyPatch,
    spoil: str,
    code: int,
    reason: str,
) -> None:
    tx, blob = _opened(local, tmp_path)
    frame = _update_frame(tx, blob)
    if spoil == "flip a byte":
        frame = _update_frame(tx, blob[:-1] + bytes([blob[-1] ^ 1]))
    elif spoil == "truncate":
        frame = _update_frame(tx, blob[:-10])
    elif spoil == "bad base64":
        body = json.loads(frame)
        body["update"]["blob"] = "***"
        frame = json.dumps(body).encode()
    elif spoil == "not an update":
        body = {"name": "erin", "roles": ["trainer"], "power": 0}
        join = make_tx(key("bob"), local.node.genesis_hash, TxKind.JOIN_REQUEST, body)
        frame = _update_frame(join, blob)
    elif spoil == "extra field":
        body = json.loads(frame)
        body["extra"] = 1
        frame = json.dumps(body).encode()
    else:
        monkeypatch.setattr(app_module, "MAX_STREAM_UPDATES", 0)
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        ws.send_bytes(_vote(local, height=5))
        ws.send_bytes(frame)
        assert _closed(ws) == (code, reason)
    assert [v.height for _, v in received] == [5]  # what came before stands
    assert len(local.node.mempool) == 0
    assert not local.node.blobs.has(tx.body["blob"])


def test_an_update_refused_after_its_hold_does_not_hold_up_the_stream(
    local: LocalNode,
    tmp_path: Path,
    received: list[tuple[Any, Any]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An update for the round after this node's waits (here 1 s) in its own task: the votes
    behind it go through at once; refused then (the round never opened), it is logged and
    nothing of it is kept."""
    monkeypatch.setattr(app_module, "NEXT_ROUND_HOLD_S", 1.0)
    caplog.set_level(logging.INFO, logger="bcfl.node.api")
    ahead = LocalNode(tmp_path / "ahead")
    try:
        ahead.mine()
        tx, blob = trained_update(ahead, tmp_path)  # for round 1, not open here
    finally:
        ahead.close()
    with local.client.websocket_connect(PEER_STREAM_PATH, headers=_opening(key("bob"))) as ws:
        began = time.monotonic()
        ws.send_bytes(_update_frame(tx, blob))
        ws.send_bytes(_vote(local, height=9))
        _until_sync(lambda: len(received) == 1)
        assert time.monotonic() - began < 0.9  # not behind the held update
        _until_sync(lambda: "refused a streamed update" in caplog.text)
        ws.send_bytes(_vote(local, height=10))  # still open
        _until_sync(lambda: len(received) == 2)
    assert "wrong_round" in caplog.text
    assert len(local.node.mempool) == 0 and not local.node.blobs.has(tx.body["blob"])


def test_the_peer_client_pushes_an_update_on_the_stream(local: LocalNode, tmp_path: Path) -> None:
    tx, blob = _opened(local, tmp_path)

    async def scenario() -> tuple[bool, int]:
        async with served(_app_at(local)) as url:
            peers = Peers(key("bob"), [url], self_url="http://me:1")
            peer = peers.peers[url]
            try:
                taken = await peers.push_update(peer, tx, blob)
                await _until(lambda: tx.hash in local.node.mempool)
                return taken, peer.streamed
            finally:
                await peers.close()
                await local.node.peers.close()

    assert asyncio.run(scenario()) == (True, 1)
    assert local.node.blobs.verify(tx.body["blob"])


def test_a_close_reason_fits_a_close_frame_whatever_the_message() -> None:
    """A close frame holds at most 123 bytes of reason (RFC 6455 §5.5); the reason was cut at
    120 *characters*, so a refusal quoting a peer's non-ASCII text (a duplicate JSON key
    ``'é' * 200``) made uvicorn's websockets raise ProtocolError out of ``_close_stream``: no
    close frame, and a traceback in the node's log for every such frame."""
    from websockets.protocol import OPEN, Protocol, Side

    class Socket:  # closes as uvicorn's sans-I/O websockets protocol does
        def __init__(self) -> None:
            self.conn = Protocol(Side.SERVER, state=OPEN)

        async def close(self, code: int, reason: str) -> None:
            self.conn.send_close(code, reason)

    socket = Socket()
    message = f"duplicate JSON key {'é' * 200!r}"
    asyncio.run(app_module._close_stream(socket, did("bob"), 1007, "malformed_body", message))  # type: ignore[arg-type]
    assert socket.conn.data_to_send()  # the close frame went out
