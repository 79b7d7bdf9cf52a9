"""The node's peer table: one small connection pool per peer, closed with the table."""

from __future__ import annotations

import asyncio

import nacl.signing

from bcfl_cli.node.peers import PEER_CONNECTIONS, PeerInfo, Peers, normalise_url


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
