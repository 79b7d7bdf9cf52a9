"""Bytes per member (issue 19): what a node counts, and what a block needs fetched here."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from bcfl_cli.node.blob_service import BlobScope, model_blobs, referenced_blobs
from bcfl_cli.node.traffic import BlobTraffic, CountingTransport
from bcfl_cli.protocol.tx import TxKind
from tests.verify.test_verify_deep import _round


def test_traffic_counts_per_round_and_forgets_old_rounds() -> None:
    current = [1]
    traffic = BlobTraffic(lambda: current[0], keep_rounds=2)
    traffic.sent(100)
    traffic.received(7)
    traffic.received(0)  # nothing moved: no row
    current[0] = 2
    traffic.received(50)
    current[0] = 3
    traffic.sent(1)
    view = traffic.view()
    assert (view.sent, view.received) == (101, 57)
    assert [(r.round, r.sent, r.received) for r in view.rounds] == [(2, 0, 50), (3, 1, 0)]


def test_the_blob_client_counts_bodies_both_ways_as_they_stream() -> None:
    traffic = BlobTraffic()

    class Pieces(httpx.SyncByteStream):
        """A body as a real transport gives it: not read until iterated."""

        def __iter__(self) -> Iterator[bytes]:
            for _ in range(3):
                yield b"x" * 1000

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, stream=Pieces())

    client = httpx.Client(transport=CountingTransport(httpx.MockTransport(answer), traffic))
    client.put("http://peer/blobs/a/chunks/0", content=b"y" * 1234)
    with client.stream("GET", "http://peer/blobs/a") as response:
        for _ in response.iter_raw(1000):
            pass
    view = traffic.view()
    assert (view.sent, view.received) == (1234, 6000)  # both answers, as they were read


def test_a_trainer_only_node_needs_the_models_a_validator_the_updates(tmp_path) -> None:
    c = _round(tmp_path)
    updates, closing = c.blocks[-2], c.blocks[-1]
    inner = object()
    mode = {"verifies": True}
    scope = BlobScope(inner, verifies=lambda: mode["verifies"])  # type: ignore[arg-type]
    assert scope.checks() is inner
    assert scope.blobs(updates) == referenced_blobs(updates) and len(scope.blobs(updates)) == 3
    assert scope.blobs(closing) == []
    assert scope.held(c.ledger.blobs, closing)
    scope.on_commit(closing)
    assert scope.unverified_rounds() == []

    mode["verifies"] = False
    assert scope.checks() is None
    assert scope.blobs(updates) == []
    ((model, size),) = model_blobs(closing).items()
    assert scope.blobs(closing) == [model]
    assert scope.prefer(closing) == {model: closing.header.proposer}
    assert scope.held(c.ledger.blobs, closing)
    c.ledger.blobs.path_for(model).write_bytes(b"short")  # not the committed size
    assert not scope.held(c.ledger.blobs, closing)
    c.ledger.blobs.path_for(model).unlink()
    assert not scope.held(c.ledger.blobs, closing)
    scope.on_commit(updates)  # no aggregate: nothing taken on trust
    scope.on_commit(closing)
    assert scope.unverified_rounds() == [1]
    assert any(tx.kind is TxKind.AGGREGATE for tx in closing.txs) and size > 0


def test_a_download_client_reads_large_bodies_and_counts_them_an_upload_client_pools() -> None:
    """``Peers.blob_client(download=True)`` (what ``BlobService`` asks for): the body read a
    large piece at a time (``LargeBodyTransport``), still counted as it streams."""
    import nacl.signing

    from bcfl_cli.client.large_body import PIECE_BYTES, LargeBodyTransport
    from bcfl_cli.node.peers import PeerInfo, Peers
    from tests.client.test_large_body import BODY, _app, _Served

    traffic = BlobTraffic()
    with _Served(_app()) as served:
        peers = Peers(
            nacl.signing.SigningKey.generate(),
            [served.url],
            self_url="http://127.0.0.1:1",
            traffic=traffic,
        )
        peer = PeerInfo(served.url.removesuffix("/v1"))
        with peers.blob_client(peer, download=True) as client:
            assert isinstance(client._client._transport, CountingTransport)
            assert isinstance(client._client._transport.inner, LargeBodyTransport)
            with client._client.stream("GET", f"{served.url}/whole") as response:
                sizes = [len(p) for p in response.iter_raw()]
        with peers.blob_client(peer) as client:
            assert isinstance(client._client._transport.inner, httpx.HTTPTransport)
    assert sum(sizes) == len(BODY) and max(sizes) == PIECE_BYTES
    assert traffic.view().received == len(BODY)
