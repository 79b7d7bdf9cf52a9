"""The blob download transport (``client/large_body.py``): what httpx's own transport answers,
a body of known length in whole pieces, and a verdict (``httpx.TransportError``) for anything a
hostile peer sends."""

from __future__ import annotations

import contextlib
import hashlib
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import nacl.signing
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from bcfl_cli.client.blobs import fetch_blob
from bcfl_cli.client.large_body import (
    MAX_HEAD_BYTES,
    PIECE_BYTES,
    PIECE_WAIT_S,
    LargeBodyTransport,
)
from bcfl_cli.client.tls import _exact_context
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.demo.launcher import free_ports
from bcfl_cli.errors import BlobError
from bcfl_cli.identity.tls_cert import certificate_from_seed
from bcfl_cli.node.blob_routes import blob_app
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.wire.refusal import Refusal

BODY = hashlib.shake_256(b"large body").digest(3 * PIECE_BYTES + 12_345)


def _app(store: BlobStore | None = None) -> Starlette:
    def whole(request: Request) -> Response:
        return Response(BODY, media_type="application/octet-stream")

    def chunked(request: Request) -> StreamingResponse:
        def pieces() -> Iterator[bytes]:
            for start in range(0, len(BODY), 100_000):
                yield BODY[start : start + 100_000]

        return StreamingResponse(pieces(), media_type="application/octet-stream")

    def missing(request: Request) -> JSONResponse:
        return JSONResponse({"error": "not_found", "message": "no such thing"}, status_code=404)

    def empty(request: Request) -> Response:
        return Response(status_code=204)

    routes = [
        Route("/whole", whole, methods=["GET", "HEAD"]),
        Route("/chunked", chunked),
        Route("/missing", missing),
        Route("/empty", empty),
    ]
    return Starlette(routes=routes)


class _Served:
    """An ASGI app behind uvicorn in a thread of the test, on loopback (``tls``: certfile,
    keyfile and its password)."""

    def __init__(self, app: object, tls: tuple[Path, Path, bytes] | None = None) -> None:
        self.port = free_ports(1)[0]
        config = uvicorn.Config(
            app,  # type: ignore[arg-type]
            host="127.0.0.1",
            port=self.port,
            log_level="critical",
            access_log=False,
            ssl_certfile=None if tls is None else tls[0],
            ssl_keyfile=None if tls is None else tls[1],
            ssl_keyfile_password=None if tls is None else tls[2].decode(),
        )
        config.load()  # the certificate read now, while its files exist
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.url = f"{'http' if tls is None else 'https'}://127.0.0.1:{self.port}"

    def __enter__(self) -> _Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def served() -> Iterator[_Served]:
    with _Served(_app()) as s:
        yield s


def _pieces(url: str, transport: httpx.BaseTransport, method: str = "GET") -> list[bytes]:
    with (
        httpx.Client(transport=transport, timeout=10) as client,
        client.stream(method, url) as response,
    ):
        return [bytes(p) for p in response.iter_raw()]


def test_a_body_of_known_length_arrives_in_whole_pieces_as_httpx_reads_it(
    served: _Served,
) -> None:
    ours = _pieces(f"{served.url}/whole", LargeBodyTransport())
    theirs = _pieces(f"{served.url}/whole", httpx.HTTPTransport())
    assert b"".join(ours) == b"".join(theirs) == BODY
    # what came in with the head, then whole pieces, the last one the rest
    assert all(len(p) == PIECE_BYTES for p in ours[1:-1]), [len(p) for p in ours]
    assert len(ours) <= len(BODY) // PIECE_BYTES + 2
    assert len(theirs) > 3 * len(ours)  # httpx: 64 KiB at a time


@pytest.mark.parametrize(
    ("path", "method"),
    [("/chunked", "GET"), ("/whole", "HEAD"), ("/empty", "GET"), ("/missing", "GET")],
)
def test_other_framings_and_answers_are_what_httpx_makes_of_them(
    served: _Served, path: str, method: str
) -> None:
    url = f"{served.url}{path}"
    answers = []
    for transport in (LargeBodyTransport(), httpx.HTTPTransport()):
        with httpx.Client(transport=transport, timeout=10) as client:
            response = client.request(method, url)
            answers.append((response.status_code, response.content, response.headers))
    (ours, our_body, our_headers), (theirs, their_body, their_headers) = answers
    assert (ours, our_body) == (theirs, their_body)
    for name in ("content-length", "content-type", "transfer-encoding"):
        assert our_headers.get(name) == their_headers.get(name)


def test_a_signed_client_refuses_as_it_does_over_httpx(served: _Served) -> None:
    key = nacl.signing.SigningKey.generate()
    with (
        SignedClient(key, served.url, transport=LargeBodyTransport(), retries=0) as client,
        pytest.raises(Refusal) as refused,
    ):
        client.get("/missing")
    assert refused.value.status == 404 and refused.value.code == "not_found"


def test_a_blob_is_fetched_whole_and_resumed_through_it(tmp_path: Path) -> None:
    """The node's download path over this transport: a whole blob hashed as it streams, and
    one whose stream is cut resumed by range requests (the manifest's path)."""
    key = nacl.signing.SigningKey.generate()
    did = did_from_public_key(bytes(key.verify_key))
    server = BlobStore(tmp_path / "server")
    data = hashlib.shake_256(b"blob").digest(5 * PIECE_BYTES // 2)
    digest = server.put(data)
    app = blob_app(server, is_member={did}.__contains__, max_blob_bytes=8 * PIECE_BYTES)
    cut = _CutOnce(app, after=PIECE_BYTES)
    with _Served(cut) as s:
        for name in ("whole", "resumed"):
            local = BlobStore(tmp_path / name)
            transport = LargeBodyTransport()
            with SignedClient(key, s.url, transport=transport, timeout=10) as client:
                fetch_blob(client, digest, local, max_bytes=8 * PIECE_BYTES, whole_first=True)
            assert local.get(digest) == data
            cut.armed = True  # the second download's first stream is cut
    assert cut.cuts == 1


class _CutOnce:
    """Drops the connection once ``after`` body bytes of a whole blob went out, when armed."""

    def __init__(self, app: Callable[..., object], after: int) -> None:
        self.app, self.after, self.armed, self.cuts = app, after, False, 0

    async def __call__(self, scope: dict[str, object], receive: object, send: object) -> None:
        headers = dict(scope.get("headers", []))  # type: ignore[arg-type]
        if not self.armed or b"range" in headers or "/manifest" in str(scope.get("path")):
            await self.app(scope, receive, send)  # type: ignore[misc]
            return
        self.armed = False
        sent = 0

        async def cutting(message: dict[str, object]) -> None:
            nonlocal sent
            if message["type"] == "http.response.body":
                sent += len(message.get("body", b""))  # type: ignore[arg-type]
                if sent > self.after:
                    self.cuts += 1
                    raise ConnectionAbortedError("test: cut mid-blob")
            await send(message)  # type: ignore[operator]

        await self.app(scope, receive, cutting)  # type: ignore[misc]


def test_over_tls_the_peer_must_show_the_pinned_certificate() -> None:
    cert = certificate_from_seed(hashlib.sha256(b"the peer").digest())
    other = certificate_from_seed(hashlib.sha256(b"someone else").digest())
    with cert.pem_files() as files, _Served(_app(), tls=files) as s:
        ours = _pieces(f"{s.url}/whole", LargeBodyTransport(verify=_exact_context(cert.der)))
        assert b"".join(ours) == BODY
        with pytest.raises(httpx.ConnectError):
            _pieces(f"{s.url}/whole", LargeBodyTransport(verify=_exact_context(other.der)))


def test_over_tls_a_context_that_checks_hostnames_judges_as_under_httpx() -> None:
    """A CA-style context (hostname checked; the node's non-pinned mode): the server name is
    the request's host, as httpcore sets it, so both transports agree on every URL."""
    cert = certificate_from_seed(hashlib.sha256(b"a named peer").digest())
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, hostname checked
    context.load_verify_locations(cadata=cert.der)
    with cert.pem_files() as files, _Served(_app(), tls=files) as s:
        for host in ("127.0.0.1", "localhost"):
            url = f"https://{host}:{s.port}/whole"
            verdicts = []
            for transport in (
                LargeBodyTransport(verify=context),
                httpx.HTTPTransport(verify=context),
            ):
                try:
                    verdicts.append(b"".join(_pieces(url, transport)) == BODY)
                except httpx.ConnectError as exc:
                    verdicts.append(type(exc).__name__)
            assert verdicts[0] == verdicts[1], (host, verdicts)
            assert verdicts[0] == "ConnectError"  # its name is no host name: refused by both


# --- hostile peers: scripted answers from a bare socket ----------------------------------------
class _Scripted:
    """A loopback listener that reads each request's head and answers with ``script``'s bytes,
    then closes (or, ``hang``, sends them and waits)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.script = b""
        self.hang = False
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                head = b""
                try:
                    while b"\r\n\r\n" not in head:
                        got = conn.recv(65536)
                        if not got:
                            break
                        head += got
                    conn.sendall(self.script)
                    if self.hang:
                        conn.recv(1)  # until the client gives up and closes
                except OSError:
                    pass

    def get(self, timeout: float = 5.0) -> bytes:
        with (
            httpx.Client(transport=LargeBodyTransport(), timeout=timeout) as client,
            client.stream("GET", f"http://127.0.0.1:{self.port}/x") as response,
        ):
            return b"".join(bytes(p) for p in response.iter_raw())

    def close(self) -> None:
        self._stop = True
        self.listener.close()


@pytest.fixture
def scripted() -> Iterator[_Scripted]:
    s = _Scripted()
    yield s
    s.close()


def test_a_body_that_ends_early_is_a_transport_error(scripted: _Scripted) -> None:
    scripted.script = b"HTTP/1.1 200 OK\r\nContent-Length: 5000000\r\n\r\n" + b"x" * 2_000_000
    with pytest.raises(httpx.RemoteProtocolError, match="still to come"):
        scripted.get()


def test_no_byte_past_the_declared_length_is_taken(scripted: _Scripted) -> None:
    body = b"y" * (PIECE_BYTES + 10)
    scripted.script = (
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body + b"EXTRA" * 1000
    )
    assert scripted.get() == body


def test_a_body_without_a_length_is_read_to_the_close_by_h11(scripted: _Scripted) -> None:
    scripted.script = b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 100_000
    assert scripted.get() == b"z" * 100_000


def test_a_length_over_the_blob_cap_is_refused_before_the_body_is_read(
    scripted: _Scripted, tmp_path: Path
) -> None:
    scripted.script = b"HTTP/1.1 200 OK\r\nContent-Length: 50000000\r\n\r\n" + b"w" * 1000
    store = BlobStore(tmp_path / "local")
    key = nacl.signing.SigningKey.generate()
    url = f"http://127.0.0.1:{scripted.port}"
    with (
        SignedClient(key, url, transport=LargeBodyTransport(), retries=0) as client,
        pytest.raises(BlobError, match="over the limit"),
    ):
        fetch_blob(client, "ab" * 32, store, max_bytes=1_000_000, whole_first=True)
    assert not store.has("ab" * 32)


def test_a_head_past_the_limit_or_garbage_is_a_transport_error(scripted: _Scripted) -> None:
    # a head that has not ended after MAX_HEAD_BYTES (h11's bound, as under httpx)
    scripted.script = b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * (8 * MAX_HEAD_BYTES)
    with pytest.raises(httpx.RemoteProtocolError):
        scripted.get()
    scripted.script = b"\x00\xffnot http at all\r\n\r\n"
    with pytest.raises(httpx.RemoteProtocolError):
        scripted.get()


def test_a_peer_that_stops_sending_runs_into_the_read_timeout(scripted: _Scripted) -> None:
    scripted.script = b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"
    scripted.hang = True
    with pytest.raises(httpx.ReadTimeout):
        scripted.get(timeout=0.2)


def test_a_trickling_peer_hands_on_what_it_sent_before_a_piece_fills() -> None:
    """A peer that sends a few bytes at a time within the read timeout must not hold the
    download's caller (its cancel check between pieces) until a whole piece has come: what
    arrived is handed on after ``PIECE_WAIT_S``, as httpx hands on every read."""
    listener = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def trickle() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % PIECE_BYTES)
            while not stop.wait(0.02):
                try:
                    conn.sendall(b"t" * 10)
                except OSError:
                    return

    thread = threading.Thread(target=trickle, daemon=True)
    thread.start()
    port = listener.getsockname()[1]
    try:
        with (
            httpx.Client(transport=LargeBodyTransport(), timeout=5.0) as client,
            client.stream("GET", f"http://127.0.0.1:{port}/x") as response,
        ):
            began = time.monotonic()
            first = next(response.iter_raw())
            waited = time.monotonic() - began
        assert 0 < len(first) < PIECE_BYTES and set(bytes(first)) == {ord("t")}
        assert waited < PIECE_WAIT_S + 4.0  # not the ~35 minutes a whole piece would take
    finally:
        stop.set()
        listener.close()
        thread.join(timeout=5)


def test_nobody_listening_is_a_connect_error() -> None:
    port = free_ports(1)[0]
    with (
        httpx.Client(transport=LargeBodyTransport(), timeout=2) as client,
        pytest.raises(httpx.ConnectError),
    ):
        client.get(f"http://127.0.0.1:{port}/x")


def test_https_without_a_context_and_other_schemes_are_refused() -> None:
    transport = LargeBodyTransport()
    for url in ("https://127.0.0.1:1/x", "ftp://127.0.0.1:1/x"):
        with pytest.raises(httpx.UnsupportedProtocol):
            transport.handle_request(httpx.Request("GET", url))


_heads = st.sampled_from(
    [
        b"HTTP/1.1 200 OK\r\n",
        b"HTTP/1.1 206 Partial Content\r\n",
        b"HTTP/1.1 404 Not Found\r\n",
        b"HTTP/1.0 200 OK\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\n",
        b"",
    ]
)
_headers = st.lists(
    st.sampled_from(
        [
            b"Content-Length: 0\r\n",
            b"Content-Length: 7\r\n",
            b"Content-Length: 2000000\r\n",
            b"Content-Length: -1\r\n",
            b"Content-Length: 1e3\r\n",
            b"Content-Length: 99999999999999999999999\r\n",
            b"Transfer-Encoding: chunked\r\n",
            b"Transfer-Encoding: gzip\r\n",
            b"Connection: close\r\n",
            b"X: \x00\r\n",
        ]
    ),
    max_size=3,
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    head=_heads,
    headers=_headers,
    body=st.one_of(st.binary(max_size=64), st.sampled_from([b"5\r\nhello\r\n0\r\n\r\n"])),
    noise=st.binary(max_size=32),
)
def test_whatever_a_peer_answers_ends_in_bytes_or_a_transport_error(
    scripted: _Scripted, head: bytes, headers: list[bytes], body: bytes, noise: bytes
) -> None:
    scripted.script = head + b"".join(headers) + b"\r\n" + body + noise
    with contextlib.suppress(httpx.TransportError):  # a verdict: the fetcher resumes or moves on
        scripted.get(timeout=2.0)
