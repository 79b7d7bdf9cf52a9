"""Blob bytes a node moves, per round: what a member pays in bandwidth (issue 19).

Every validator must receive every update to check it; a member that only trains needs one
update up and one model down a round. ``/v1/status`` shows what each node really moved
(``traffic``), so a benchmark sets validators and trainers against that minimum.

Counted where blob bytes cross this node's edge, whichever side opened the connection: blobs
served (``GET /blobs``) and pushed to peers are *sent*; chunks and inline blobs that peers
upload here, and blobs fetched from peers, are *received*. Request heads, transactions and
consensus messages are not blob bytes and are not counted. The rounds are the chain's round
number when the bytes moved (the aggregate of round r is fetched while r is the latest round),
the last ``KEEP_ROUNDS`` of them; counts are updated from the event loop and from the fetch
and upload threads alike, under one lock.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator

import httpx

from bcfl_cli.wire.schemas import RoundTrafficView, TrafficView

#: Rounds whose counts ``/v1/status`` shows (older ones only in the totals).
KEEP_ROUNDS = 16


class BlobTraffic:
    """Bytes of blobs sent and received by one node, in all and for the last rounds."""

    def __init__(
        self, round_of: Callable[[], int] = lambda: 0, *, keep_rounds: int = KEEP_ROUNDS
    ) -> None:
        self._round_of = round_of
        self._keep = keep_rounds
        self._lock = threading.Lock()
        self._sent = 0
        self._received = 0
        self._rounds: OrderedDict[int, list[int]] = OrderedDict()

    def sent(self, nbytes: int) -> None:
        self._add(0, nbytes)

    def received(self, nbytes: int) -> None:
        self._add(1, nbytes)

    def _add(self, side: int, nbytes: int) -> None:
        if nbytes <= 0:
            return
        number = self._round_of()
        with self._lock:
            if side == 0:
                self._sent += nbytes
            else:
                self._received += nbytes
            counts = self._rounds.get(number)
            if counts is None:
                counts = self._rounds[number] = [0, 0]
                while len(self._rounds) > self._keep:
                    self._rounds.popitem(last=False)
            counts[side] += nbytes

    def view(self) -> TrafficView:
        with self._lock:
            return TrafficView(
                sent=self._sent,
                received=self._received,
                rounds=[
                    RoundTrafficView(round=number, sent=sent, received=received)
                    for number, (sent, received) in sorted(self._rounds.items())
                ],
            )


class CountingTransport(httpx.BaseTransport):
    """An httpx transport that counts request bodies as sent and response bodies as received,
    as they stream (the blob client of ``Peers.blob_client``: fetches and resumable uploads)."""

    def __init__(self, inner: httpx.BaseTransport, traffic: BlobTraffic) -> None:
        self.inner = inner
        self.traffic = traffic

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        length = request.headers.get("content-length", "")
        if length.isascii() and length.isdigit():
            self.traffic.sent(int(length))
        response = self.inner.handle_request(request)
        response.stream = _CountedStream(response.stream, self.traffic)
        return response

    def close(self) -> None:
        self.inner.close()


class _CountedStream(httpx.SyncByteStream):
    def __init__(self, inner: httpx.SyncByteStream | httpx.AsyncByteStream, traffic: BlobTraffic):
        self.inner = inner
        self.traffic = traffic

    def __iter__(self) -> Iterator[bytes]:
        assert isinstance(self.inner, httpx.SyncByteStream)
        for piece in self.inner:
            self.traffic.received(len(piece))
            yield piece

    def close(self) -> None:
        if isinstance(self.inner, httpx.SyncByteStream):
            self.inner.close()
