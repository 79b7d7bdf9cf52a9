"""The node's peer table: one small connection pool per peer, closed with the table; the
peer client's bounds on what a peer answers."""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Route

from bcfl_cli.node.peers import (
    MAX_SEEN_TAGS,
    PEER_CONNECTIONS,
    PeerInfo,
    Peers,
    did_tag,
    parse_seen,
)
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.wire.refusal import Refusal
from bcfl_cli.wire.urls import normalise_url
from tests.node._node_harness import served


def test_each_peer_has_its_own_small_pool_and_strangers_share_one() -> None:
    async def scenario() -> None:
        peers = Peers(
            nacl.signing.SigningKey(b"\x01" * 32),
            ["127.0.0.1:9001", "http://127.0.0.1:9002/v1", "http://me:1"],
            self_url="http://me:1",
        )
        assert sorted(peers.peers) == ["http://127.0.0.1:9001", "http://127.0.0.1:9002"]
        a, b = peers.peers["http://127.0.0.1:9001"], peers.peers["http://127.0.0.1:9002"]
        client_a = peers._client_for(a)
        assert peers._client_for(a) is client_a and peers._client_for(b) is not client_a
        assert client_a.connector is not None and client_a.connector.limit == PEER_CONNECTIONS
        # a URL being checked before it is learned, or a copy of a peer's record: never a
        # pool of its own, so no stranger can make the node hold connections at will
        stranger = PeerInfo(normalise_url("http://127.0.0.1:9003"))
        assert peers._client_for(stranger) is peers._other
        shared = peers._client_for(PeerInfo(a.url))
        assert shared is peers._other
        await peers.close()
        assert client_a.closed and shared.closed and not peers._clients

    asyncio.run(scenario())


def _dids(n: int) -> list[str]:
    return [
        did_from_public_key(bytes(nacl.signing.SigningKey(bytes([i + 2]) * 32).verify_key))
        for i in range(n)
    ]


def test_a_transaction_goes_only_to_peers_outside_the_seen_set() -> None:
    async def scenario() -> None:
        me = nacl.signing.SigningKey(b"\x01" * 32)
        urls = [f"http://127.0.0.1:{9001 + i}" for i in range(3)]
        peers = Peers(me, urls, self_url="http://me:1")
        dids = _dids(3)
        for url, did in zip(urls, dids, strict=True):
            peers.peers[url].did = did
        a, b, c = (peers.peers[u] for u in urls)
        # the author's node: sends to all, naming everyone it covered
        peers.broadcast("/v1/txs", {"tx": 1}, seen=frozenset())
        sent = [p.outbox.get_nowait() for p in (a, b, c)]
        assert {s[2] for s in sent} == {
            " ".join(sorted({peers.own_tag, *(did_tag(d) for d in dids)}))
        }
        # a relay of what b sent (naming a): only c is left to tell
        peers.broadcast("/v1/txs", {"tx": 2}, seen=frozenset({did_tag(dids[0]), did_tag(dids[1])}))
        assert a.outbox.empty() and b.outbox.empty()
        path, _body, header = c.outbox.get_nowait()
        assert path == "/v1/txs" and header is not None and peers.own_tag in header.split()
        # a peer whose did is not known yet is always told; consensus messages go to all
        c.did = None
        peers.broadcast("/v1/txs", {"tx": 3}, seen=frozenset(did_tag(d) for d in dids))
        assert a.outbox.empty() and b.outbox.empty() and c.outbox.qsize() == 1
        peers.broadcast("/v1/consensus", {"vote": 1})
        assert all(p.outbox.qsize() >= 1 for p in (a, b, c))
        assert a.outbox.get_nowait()[2] is None
        await peers.close()

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "value",
    [None, "", "xyz", "0123456789AB", "0123456789ab 12", " ".join(["0123456789ab"] * 129)],
)
def test_a_malformed_seen_header_means_relay_to_all(value: str | None) -> None:
    assert parse_seen(value) == frozenset()


@given(st.lists(st.text(min_size=1, max_size=20), max_size=MAX_SEEN_TAGS))
def test_seen_header_round_trips_the_tags_of_any_dids(dids: list[str]) -> None:
    tags = {did_tag(d) for d in dids}
    assert parse_seen(" ".join(sorted(tags))) == frozenset(tags)
    assert parse_seen("\t".join(tags)) == frozenset(tags)


def _lying_peer(port: int) -> Starlette:
    """A peer whose answers test the client's bounds (the port is not needed: nothing is signed
    back)."""

    async def big(request: Request) -> Response:
        return Response(b"[" + b"1," * 600 + b"1]", media_type="application/json")

    async def streamed(request: Request) -> StreamingResponse:
        async def pieces() -> AsyncIterator[bytes]:
            yield b"["
            for _ in range(600):
                yield b"1,"
            yield b"1]"

        return StreamingResponse(pieces(), media_type="application/json")

    async def gzipped(request: Request) -> Response:
        body = gzip.compress(b'{"ok": true}')
        return Response(body, media_type="application/json", headers={"Content-Encoding": "gzip"})

    async def moved(request: Request) -> Response:
        return RedirectResponse("/v1/big", status_code=307)

    async def slow(request: Request) -> Response:
        await asyncio.sleep(2.0)
        return JSONResponse({"late": True})

    async def refused(request: Request) -> Response:
        return JSONResponse({"error": "not_member", "message": "who are you"}, status_code=403)

    async def echo(request: Request) -> Response:
        return JSONResponse(
            {
                "query": request.url.query,
                "signed": "signature" in request.headers,
                "body": (await request.body()).decode(),
            }
        )

    return Starlette(
        routes=[
            Route("/v1/big", big),
            Route("/v1/streamed", streamed),
            Route("/v1/gzipped", gzipped),
            Route("/v1/moved", moved),
            Route("/v1/slow", slow),
            Route("/v1/refused", refused),
            Route("/v1/echo", echo, methods=["GET", "POST"]),
        ]
    )


def test_the_peer_client_bounds_every_answer() -> None:
    """Each bad answer is one Refusal; a good one is parsed JSON."""

    async def scenario() -> None:
        async with served(_lying_peer) as url:
            peers = Peers(nacl.signing.SigningKey(b"\x01" * 32), [url], self_url="http://me:1")
            peer = peers.peers[url]
            try:
                for path in ("/v1/big", "/v1/streamed"):
                    with pytest.raises(Refusal, match="answer over 1000 bytes"):
                        await peers.get(peer, path, max_bytes=1000)
                    assert len(await peers.get(peer, path)) == 601
                with pytest.raises(Refusal, match="malformed answer"):
                    await peers.get(peer, "/v1/gzipped")  # never inflated
                with pytest.raises(Refusal) as moved:
                    await peers.get(peer, "/v1/moved")  # never followed
                assert moved.value.status == 307
                with pytest.raises(Refusal) as late:
                    await peers.get(peer, "/v1/slow", timeout_s=0.3)
                assert late.value.status == 0 and "Timeout" in late.value.message
                with pytest.raises(Refusal) as refused:
                    await peers.get(peer, "/v1/refused")
                assert (refused.value.status, refused.value.code) == (403, "not_member")
                echoed = await peers.post(peer, "/v1/echo", {"a": 1}, params={"size": 5})
                assert echoed == {"query": "size=5", "signed": True, "body": '{"a":1}'}
            finally:
                await peers.close()
        with pytest.raises(Refusal) as gone:  # the server is down now
            await peers.get(peer, "/v1/echo")
        assert gone.value.status == 0
        await peers.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("url", ["http://[::1", "http://[zz]:1", "https://[::1/v1"])
def test_a_member_naming_an_unparseable_node_url_is_ignored_not_raised(url: str) -> None:
    """``Bcfl-Node-Url`` is a member's header: ``urlsplit`` raises ValueError on a broken IPv6
    host, which escaped ``_learn_peer`` (a 500 on /v1/txs and /v1/consensus, the stream
    closed with ``_streams`` still naming it); it must be a claim refused, nothing more."""

    async def scenario() -> None:
        peers = Peers(nacl.signing.SigningKey(b"\x01" * 32), [], self_url="http://me:1")
        peers.learn(url, _dids(1)[0], "00" * 32)
        assert not peers.peers and not peers._learning
        await peers.close()

    asyncio.run(scenario())
