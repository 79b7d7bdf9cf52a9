"""An httpx transport for blob downloads: the response head parsed by h11, a body of known
length read from the socket a large piece at a time.

httpx (through httpcore and h11) reads a response 64 KiB at a time and passes each piece
through h11's receive buffer, its content-length reader, httpcore's and httpx's iterators: a
40 MB update is ~640 pieces, each copied twice and handled by ~100 µs of Python. On a fresh
node's catch-up that was 1.3 CPU-s per 800 MB before a byte was hashed, on the two cores the
serving node, the rules and four downloads share, and every piece let the GIL change hands
(issue 21, item 3). This transport sends the request and parses the response's status line and
headers with h11 exactly as httpcore does; then, for a body framed by ``Content-Length`` alone,
it reads exactly that many bytes straight from the socket into buffers of ``PIECE_BYTES``
(``recv_into``, no copy), each filled before it is handed on. Any other framing (chunked, no
length, a HEAD, a 204/304) is read through h11 as usual.

What a peer controls stays bounded as before: the head by h11 (refused once ``MAX_HEAD_BYTES``
have come without its end, as under httpx), the body
by its declared length (never a byte past it is read; one that ends early is a
``httpx.RemoteProtocolError``), each wait by the read timeout, and the memory by one piece a
download. Every failure is an ``httpx.TransportError``, which the blob fetcher already treats as
a broken download (it resumes through the manifest); the caller still hashes every byte
against the blob's name. One connection a request, closed with the response: a node's blob
client makes one download a client (``BlobService``), so there is no pool to keep. Nothing is
read from the environment (no proxies, no ``SSL_CERT_FILE``: httpx's ``trust_env`` has no
counterpart here), and TLS is the caller's context as given, with the request's host as the
server name (SNI, and the hostname check when the context asks for one), as httpcore does.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Iterator
from typing import Any

import h11
import httpx

#: Bytes a download reads from the socket before it hands them on (one buffer a download).
PIECE_BYTES = 1024 * 1024
#: Seconds a piece may wait to fill before what it holds is handed on: a peer that trickles
#: bytes must not keep the download's caller (its cancel check, its progress) waiting for a
#: whole piece, only for the read timeout between two of its bytes, as under httpx.
PIECE_WAIT_S = 0.25
#: Bytes of a response's status line and headers that h11 takes without seeing their end
#: (its own default, as under httpx; said here).
MAX_HEAD_BYTES = 16 * 1024
#: Bytes asked of the socket while the head is still being read.
_HEAD_READ = 64 * 1024


def _timeouts(request: httpx.Request) -> tuple[float | None, float | None]:
    timeout: dict[str, Any] = request.extensions.get("timeout", {})
    return timeout.get("connect"), timeout.get("read")


class LargeBodyTransport(httpx.BaseTransport):
    """Plain HTTP/1.1 (and TLS with ``verify``) to one request's host, one connection each."""

    def __init__(self, *, verify: ssl.SSLContext | None = None) -> None:
        self._verify = verify

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        scheme = request.url.scheme
        if scheme not in {"http", "https"}:
            raise httpx.UnsupportedProtocol(f"{scheme!r} is not http or https")
        if scheme == "https" and self._verify is None:
            raise httpx.UnsupportedProtocol("an https request needs a TLS context")
        host = request.url.host
        port = request.url.port or (443 if scheme == "https" else 80)
        connect_s, read_s = _timeouts(request)
        sock = _connect(host, port, connect_s)
        try:
            if scheme == "https":
                assert self._verify is not None
                sni = request.extensions.get("sni_hostname", host)
                sock = _start_tls(sock, self._verify, sni, connect_s)
            sock.settimeout(read_s)
            conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD_BYTES)
            _send_request(sock, conn, request)
            head = _receive_head(sock, conn)
        except BaseException:
            sock.close()
            raise
        length = _plain_length(request.method, head)
        stream = _BodyStream(sock, conn, length)
        return httpx.Response(
            head.status_code,
            headers=head.headers.raw_items(),
            stream=stream,
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )


def _connect(host: str, port: int, timeout: float | None) -> socket.socket:
    try:
        sock = socket.create_connection((host, port), timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc)) from exc
    except OSError as exc:
        raise httpx.ConnectError(str(exc)) from exc
    return sock


def _start_tls(
    sock: socket.socket, context: ssl.SSLContext, sni: str, timeout: float | None
) -> socket.socket:
    try:
        sock.settimeout(timeout)
        return context.wrap_socket(sock, server_hostname=sni)
    except TimeoutError as exc:
        raise httpx.ConnectTimeout(str(exc)) from exc
    except OSError as exc:  # ssl.SSLError included
        raise httpx.ConnectError(str(exc)) from exc


def _send_request(sock: socket.socket, conn: h11.Connection, request: httpx.Request) -> None:
    try:
        out = conn.send(
            h11.Request(
                method=request.method,
                target=request.url.raw_path,
                headers=request.headers.raw,
            )
        )
        assert out is not None
        sock.sendall(out)
        for part in request.stream:  # type: ignore[union-attr]  # sync clients only
            data = conn.send(h11.Data(data=part))
            if data:
                sock.sendall(data)
        end = conn.send(h11.EndOfMessage())
        if end:
            sock.sendall(end)
    except h11.LocalProtocolError as exc:
        raise httpx.LocalProtocolError(str(exc)) from exc
    except TimeoutError as exc:
        raise httpx.WriteTimeout(str(exc)) from exc
    except OSError as exc:
        raise httpx.WriteError(str(exc)) from exc


def _receive(sock: socket.socket, size: int) -> bytes:
    try:
        return sock.recv(size)
    except TimeoutError as exc:
        raise httpx.ReadTimeout(str(exc)) from exc
    except OSError as exc:
        raise httpx.ReadError(str(exc)) from exc


def _next_event(conn: h11.Connection) -> Any:
    try:
        return conn.next_event()
    except h11.RemoteProtocolError as exc:
        raise httpx.RemoteProtocolError(str(exc)) from exc


def _receive_head(sock: socket.socket, conn: h11.Connection) -> h11.Response:
    while True:
        event = _next_event(conn)
        if event is h11.NEED_DATA:
            conn.receive_data(_receive(sock, _HEAD_READ))
            continue
        if isinstance(event, h11.InformationalResponse):
            continue  # a 1xx before the answer (h11 checks it)
        if isinstance(event, h11.Response):
            return event
        raise httpx.RemoteProtocolError(f"the peer closed before its answer ({type(event)})")


def _plain_length(method: str, head: h11.Response) -> int | None:
    """The body's length when it is framed by ``Content-Length`` alone (as h11 reads it),
    else None (h11 reads that body)."""
    if method == "HEAD" or head.status_code in {204, 304}:
        return None
    lengths = [v for k, v in head.headers if k == b"content-length"]
    chunked = any(k == b"transfer-encoding" for k, _ in head.headers)
    if chunked or len(lengths) != 1:
        return None  # h11 refuses what is inconsistent; let it
    return int(lengths[0])  # h11 accepted it: ASCII digits


class _BodyStream(httpx.SyncByteStream):
    """The response body: what h11 holds of it already, then (``length`` known) the rest
    from the socket in pieces of ``PIECE_BYTES``, each a buffer of its own."""

    def __init__(self, sock: socket.socket, conn: h11.Connection, length: int | None) -> None:
        self._sock = sock
        self._conn = conn
        self._length = length

    def __iter__(self) -> Iterator[bytes]:
        try:
            yield from self._read()
        finally:
            self.close()

    def _read(self) -> Iterator[bytes]:
        conn, length = self._conn, self._length
        got = 0
        while True:  # what came with the head, and every body h11 frames itself
            event = _next_event(conn)
            if isinstance(event, h11.Data):
                got += len(event.data)
                yield bytes(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return
            elif event is h11.NEED_DATA:
                if length is not None:
                    break
                conn.receive_data(_receive(self._sock, _HEAD_READ))
            else:
                raise httpx.RemoteProtocolError(f"unexpected {type(event).__name__} in a body")
        left = length - got
        while left > 0:
            piece = bytearray(min(PIECE_BYTES, left))
            view = memoryview(piece)
            filled = 0
            began = time.monotonic()
            while filled < len(piece):
                if filled and time.monotonic() - began > PIECE_WAIT_S:
                    del view  # a bytearray with a live view cannot be resized
                    del piece[filled:]
                    break
                try:
                    count = self._sock.recv_into(view[filled:])
                except TimeoutError as exc:
                    raise httpx.ReadTimeout(str(exc)) from exc
                except OSError as exc:
                    raise httpx.ReadError(str(exc)) from exc
                if count == 0:
                    raise httpx.RemoteProtocolError(
                        f"peer closed the connection with {left - filled} of {length} bytes "
                        "still to come"
                    )
                filled += count
            left -= filled
            yield piece  # a bytearray of its own, never reused (bytes to every reader)

    def close(self) -> None:
        self._sock.close()


__all__ = ["MAX_HEAD_BYTES", "PIECE_BYTES", "PIECE_WAIT_S", "LargeBodyTransport"]
