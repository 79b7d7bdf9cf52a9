"""The node's peer table: one small connection pool per peer, closed with the table."""

from __future__ import annotations

import asyncio

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcfl_cli.node.peers import (
    MAX_SEEN_TAGS,
    PEER_CONNECTIONS,
    PeerInfo,
    Peers,
    did_tag,
    normalise_url,
    parse_seen,
)
from bcfl_cli.protocol.crypto import did_from_public_key


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
        pool = client_a._transport._pool  # type: ignore[attr-defined]
        assert pool._max_connections == PEER_CONNECTIONS
        # a URL being checked before it is learned, or a copy of a peer's record: never a
        # pool of its own, so no stranger can make the node hold connections at will
        stranger = PeerInfo(normalise_url("http://127.0.0.1:9003"))
        assert peers._client_for(stranger) is peers._other
        assert peers._client_for(PeerInfo(a.url)) is peers._other
        await peers.close()
        assert client_a.is_closed and peers._other.is_closed and not peers._clients

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
