"""The node's front door under attack: sockets held open, bodies from strangers, misdirected
signatures and node URLs (issue 16, items 4, 5, 12 and 14).

In-process (uvicorn on loopback, the node's own ``http_config``); the same attacks against four
real node processes are in tests/faults/test_slowloris.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx
import nacl.signing
import pytest
import uvicorn
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.types import Message, Receive, Scope, Send

from bcfl_cli.errors import NodeError
from bcfl_cli.node.app import advertised_authorities, loopback_authorities
from bcfl_cli.node.auth import SignatureAuth
from bcfl_cli.node.budget import BodyBudget
from bcfl_cli.node.connections import ConnectionGuard
from bcfl_cli.node.limits import NodeLimits
from bcfl_cli.node.peers import NODE_URL_HEADER
from bcfl_cli.node.server import http_config
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.wire.httpsig import RequestView, sign_request, verify_request

MIB = 1024 * 1024


# --- item 5: a body is read only after the head's signature checked out ------------------------
class _Recorder:
    """An ASGI exchange by hand: how much of the body the layer asked for, what it answered."""

    def __init__(self, body: bytes, pieces: int = 1, gap_s: float = 0.0) -> None:
        size = -(-len(body) // pieces)
        self.pieces = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
        self.gap_s = gap_s
        self.reads = 0
        self.sent: list[Message] = []

    async def receive(self) -> Message:
        if self.reads >= len(self.pieces):
            await asyncio.sleep(3600)  # the client never sends more
        piece = self.pieces[self.reads]
        self.reads += 1
        if self.gap_s:
            await asyncio.sleep(self.gap_s)
        return {"type": "http.request", "body": piece, "more_body": self.reads < len(self.pieces)}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    @property
    def status(self) -> int:
        return int(self.sent[0]["status"])

    @property
    def headers(self) -> dict[bytes, bytes]:
        return dict(self.sent[0]["headers"])


def _scope(headers: dict[str, str], *, client: str = "127.0.0.1", path: str = "/tx") -> Scope:
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "scheme": "http",
        "client": (client, 5000),
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
    }


class _Layer:
    def __init__(self, **kw: Any) -> None:
        self.member = nacl.signing.SigningKey.generate()
        self.members = {did_from_public_key(bytes(self.member.verify_key))}
        self.calls = 0
        self.node_urls: list[str | None] = []

        async def app(scope: Scope, receive: Receive, send: Send) -> None:
            self.calls += 1
            url = dict(scope["headers"]).get(b"bcfl-node-url")
            self.node_urls.append(url.decode() if url else None)
            body = b""
            while True:
                message = await receive()
                body += message.get("body", b"")
                if not message.get("more_body"):
                    break
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await send({"type": "http.response.body", "body": str(len(body)).encode()})

        self.auth = SignatureAuth(app, is_member=self.members.__contains__, **kw)

    def signed(self, key: nacl.signing.SigningKey, body: bytes, **extra: str) -> dict[str, str]:
        headers = {"host": "testserver", "content-length": str(len(body)), **extra}
        headers.update(sign_request(key, "POST", "http://testserver/tx", headers, body))
        return {k.lower(): v for k, v in headers.items()}

    def run(self, headers: dict[str, str], rec: _Recorder, **kw: Any) -> _Recorder:
        asyncio.run(asyncio.wait_for(self.auth(_scope(headers, **kw), rec.receive, rec.send), 10))
        return rec


def test_strangers_bodies_are_refused_unread() -> None:
    layer = _Layer()
    body = b"x" * (8 * MIB - 1)
    stranger = nacl.signing.SigningKey.generate()
    forged = layer.signed(layer.member, body)
    forged["signature"] = layer.signed(stranger, body)["signature"]
    cases = [
        ({"host": "testserver", "content-length": str(len(body))}, 401, b"missing_signature"),
        ({"host": "testserver", "transfer-encoding": "chunked"}, 401, b"missing_signature"),
        (forged, 401, b"bad_signature"),
        (layer.signed(stranger, body), 403, b"not_member"),
    ]
    for headers, status, code in cases:
        rec = layer.run(headers, _Recorder(body, pieces=128))
        assert rec.status == status and code in rec.sent[1]["body"], rec.sent
        assert rec.reads == 0, f"{code!r}: {rec.reads} pieces of a stranger's body were read"
        # the rest of the body is never parsed as a next request: the connection is closed
        assert rec.headers.get(b"connection") == b"close"
    assert layer.calls == 0
    # a member's body is read and handed on
    rec = layer.run(layer.signed(layer.member, body), _Recorder(body, pieces=4))
    assert rec.status == 200 and rec.sent[1]["body"] == str(len(body)).encode()
    assert layer.auth.budget.held == 0  # given back once answered


def test_a_members_body_has_a_total_deadline() -> None:
    layer = _Layer(body_timeout_s=0.5)
    body = b"y" * 4000
    # each piece within any per-piece timeout, the whole far slower than the deadline
    rec = layer.run(layer.signed(layer.member, body), _Recorder(body, pieces=40, gap_s=0.05))
    assert rec.status == 408 and b"body_timeout" in rec.sent[1]["body"]
    assert rec.reads < 40 and layer.calls == 0
    assert rec.headers.get(b"connection") == b"close"


def test_bodies_held_are_bounded_per_signer_and_in_all() -> None:
    budget = BodyBudget(total=3 * MIB, per_signer=2 * MIB)
    layer = _Layer(budget=budget, limits=NodeLimits(max_body_bytes=8 * MIB))
    other = nacl.signing.SigningKey.generate()
    layer.members.add(did_from_public_key(bytes(other.verify_key)))
    body = b"z" * (MIB + MIB // 2)

    async def scenario() -> list[int]:
        # three member bodies arrive at once; each stalls half-way until the others are in
        started = asyncio.Event()
        recs = []

        def one(key: nacl.signing.SigningKey) -> Awaitable[None]:
            rec = _Recorder(body, pieces=2)
            inner = rec.receive

            async def receive() -> Message:
                if rec.reads == 1:
                    await started.wait()
                return await inner()

            recs.append(rec)
            return layer.auth(_scope(layer.signed(key, body)), receive, rec.send)

        tasks = [asyncio.create_task(one(k)) for k in (layer.member, layer.member, other)]
        await asyncio.sleep(0.2)
        started.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)
        return sorted(r.status for r in recs)

    # the member's second body does not fit its 2 MiB share; the other's fits the total
    assert asyncio.run(scenario()) == [200, 200, 503]
    assert budget.held == 0 and budget.peak <= budget.total


@settings(max_examples=60, deadline=None)
@given(ops=st.lists(st.tuples(st.sampled_from("abc"), st.integers(0, 40)), max_size=60))
def test_body_budget_never_exceeds_its_bounds(ops: list[tuple[str, int]]) -> None:
    budget = BodyBudget(total=60, per_signer=25)
    taken: list[tuple[str, int]] = []
    for signer, size in ops:
        if size % 3 == 0 and taken:
            budget.give(*taken.pop(size % len(taken)))
        elif budget.take(signer, size):
            taken.append((signer, size))
        assert budget.held <= 60 and all(budget.held_by(s) <= 25 for s in "abc")
        assert budget.held == sum(n for _, n in taken)


# --- item 12: the node URL a peer names is covered by its signature ---------------------------
def test_node_url_header_is_covered_by_the_signature() -> None:
    layer = _Layer()
    body = b"{}"
    # the signer's own header is covered, and reaches the app
    headers = layer.signed(layer.member, body, **{NODE_URL_HEADER: "http://10.0.0.1:7420"})
    assert "bcfl-node-url" in headers["signature-input"]
    assert layer.run(headers, _Recorder(body)).status == 200
    assert layer.node_urls == ["http://10.0.0.1:7420"]
    # one changed on the way breaks the signature
    changed = {**headers, "bcfl-node-url": "http://169.254.169.254"}
    assert layer.run(changed, _Recorder(body)).status == 401
    # one added on the way (or by a node that signs without it) never reaches the app
    added = {**layer.signed(layer.member, body), "bcfl-node-url": "http://169.254.169.254"}
    assert layer.run(added, _Recorder(body)).status == 200
    assert layer.node_urls == ["http://10.0.0.1:7420", None]


def test_node_url_header_round_trips_in_verify() -> None:
    key = nacl.signing.SigningKey.generate()
    url = "http://n.example/v1/stream"
    headers = {"host": "n.example", NODE_URL_HEADER: "http://me.example"}
    headers.update(sign_request(key, "GET", url, headers, None))
    assert (
        "bcfl-node-url" in verify_request(RequestView.from_url("GET", url, headers), None).covered
    )


# --- item 14: @authority is bound to the node's names, on a wildcard too -----------------------
def test_wildcard_listener_checks_its_advertised_name() -> None:
    for host in ("0.0.0.0", "::"):  # noqa: S104
        with pytest.raises(NodeError, match="needs the name peers use"):
            advertised_authorities(host, 7420, None)
        names = advertised_authorities(host, 7420, "https://node-b.example/")
        assert names == ["node-b.example"]
    assert "localhost:7420" in advertised_authorities("127.0.0.1", 7420, None)
    assert advertised_authorities("10.1.2.3", 7420, None) == ["10.1.2.3:7420"]

    member = nacl.signing.SigningKey.generate()
    did = did_from_public_key(bytes(member.verify_key))

    async def ok(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    node_b = SignatureAuth(
        ok,
        is_member={did}.__contains__,
        authorities=advertised_authorities("0.0.0.0", 7420, "https://node-b.example"),  # noqa: S104
        local_authorities=loopback_authorities(7420),
    )

    def send_to(host: str, client: str) -> int:
        headers = {"host": host, "content-length": "2"}
        headers.update(sign_request(member, "POST", f"http://{host}/tx", headers, b"{}"))
        rec = _Recorder(b"{}")
        asyncio.run(node_b(_scope(headers, client=client), rec.receive, rec.send))
        return rec.status

    assert send_to("node-a.example", "203.0.113.7") == 401  # signed for node A: refused at B
    assert send_to("node-b.example", "203.0.113.7") == 200
    assert send_to("127.0.0.1:7420", "127.0.0.1") == 200  # the member's own commands
    assert send_to("localhost:7420", "::ffff:127.0.0.1") == 200  # the same, on a node on ::
    assert send_to("127.0.0.1:7420", "203.0.113.7") == 401  # a loopback name from afar


# --- item 4: half-open sockets no longer starve members ----------------------------------------
async def _app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def _big(scope: Scope, receive: Receive, send: Send) -> None:
    """64 MiB in 1 MiB pieces: a response a slow reader never finishes."""
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    for _ in range(64):
        await send({"type": "http.response.body", "body": b"b" * MIB, "more_body": True})
    await send({"type": "http.response.body", "body": b""})


@contextlib.asynccontextmanager
async def _served(app: Any = None, **config: Any) -> AsyncIterator[int]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    server = uvicorn.Server(http_config(app or _app, "127.0.0.1", port, **config))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    try:
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started
        yield port
    finally:
        server.should_exit = True
        server.force_exit = True
        await asyncio.wait_for(task, 20)
        sock.close()


_Conn = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _half_open(port: int, source: str, count: int) -> list[_Conn]:
    """``count`` connections from ``source`` that each sent half a request line."""
    conns = []
    for _ in range(count):
        try:
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(source, 0), limit=1024
            )
        except OSError:
            continue
        writer.write(b"POST /v1/txs HT")
        conns.append((reader, writer))
    await asyncio.sleep(0.2)
    return conns


async def _closed_by_server(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(100), 5) == b""
    except (ConnectionError, OSError):
        return True
    except TimeoutError:
        return False


def _close_all(conns: list[_Conn]) -> None:
    for _, writer in conns:
        with contextlib.suppress(Exception):
            writer.transport.abort()


def test_half_open_sockets_do_not_turn_members_away() -> None:
    """520 sockets that sent half a request line made every request 503 for 30 s."""

    async def scenario() -> tuple[int, float]:
        async with _served() as port:
            held = []
            for i in range(4):
                held += await _half_open(port, f"127.0.0.{i + 2}", 150)
            try:
                t0 = time.monotonic()
                async with httpx.AsyncClient() as client:
                    answer = await client.get(f"http://127.0.0.1:{port}/", timeout=10)
                return answer.status_code, time.monotonic() - t0
            finally:
                _close_all(held)

    status, took = asyncio.run(scenario())
    assert status == 200, f"a member got {status} while 600 sockets were held open elsewhere"
    assert took < 5


def test_head_deadline_and_per_address_cap() -> None:
    async def scenario() -> dict[str, Any]:
        guard = ConnectionGuard(max_total=200, max_per_address=50, head_timeout_s=1.0)
        async with _served(guard=guard) as port:
            attack = await _half_open(port, "127.0.0.2", 120)
            at_cap = guard.count("127.0.0.2")
            # from another address, a whole request goes through at once
            async with httpx.AsyncClient() as client:
                answer = await client.get(f"http://127.0.0.1:{port}/", timeout=10)
            # a head dribbled a byte a second never completes in time
            slow = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.3", 0))
            for byte in b"GET / HTTP/1.1\r\n":
                if slow[1].transport.is_closing():
                    break
                with contextlib.suppress(ConnectionError):
                    slow[1].write(bytes([byte]))
                await asyncio.sleep(0.15)
            await asyncio.sleep(1.5)
            left = guard.count("127.0.0.2") + guard.count("127.0.0.3")
            eof = [await _closed_by_server(r) for r, _ in [*attack[-5:], slow]]
            _close_all([*attack, slow])
            return {
                "at_cap": at_cap,
                "status": answer.status_code,
                "left": left,
                "eof": eof,
                "figures": guard.figures,
            }

    out = asyncio.run(scenario())
    assert out["at_cap"] == 50, out
    assert out["status"] == 200
    assert out["left"] == 0 and all(out["eof"]), out
    assert out["figures"].head_timeouts >= 51 and out["figures"].evicted >= 70


def test_guard_evicts_idle_before_refusing_and_never_a_busy_one() -> None:
    class _T:
        def __init__(self) -> None:
            self.aborted = False

        def abort(self) -> None:
            self.aborted = True

    guard = ConnectionGuard(max_total=4, max_per_address=3, head_timeout_s=1)
    a = [_T() for _ in range(3)]
    for t in a:
        assert guard.open(t, "a")  # type: ignore[arg-type]
    for t in a:
        guard.set_busy(t, True)  # type: ignore[arg-type]
    assert not guard.open(_T(), "a")  # type: ignore[arg-type]
    guard.set_busy(a[1], False)  # type: ignore[arg-type]
    newer = _T()
    assert guard.open(newer, "a") and a[1].aborted  # type: ignore[arg-type]
    b = _T()
    assert guard.open(b, "b")  # type: ignore[arg-type]
    # full: the address with the most connections loses its oldest idle one
    assert len(guard) == 4
    c = _T()
    assert guard.open(c, "c")  # type: ignore[arg-type]
    assert newer.aborted and not b.aborted and not a[0].aborted and not a[2].aborted
    guard.close(c)  # type: ignore[arg-type]
    assert len(guard) == 3


@settings(max_examples=60, deadline=None)
@given(
    ops=st.lists(
        st.tuples(st.sampled_from(["open", "busy", "idle", "close"]), st.integers(0, 5)),
        max_size=80,
    )
)
def test_guard_caps_hold_and_busy_connections_are_never_closed(
    ops: list[tuple[str, int]],
) -> None:
    class _T:
        aborted = False

        def abort(self) -> None:
            self.aborted = True

    guard = ConnectionGuard(max_total=6, max_per_address=3, head_timeout_s=1)
    opened: list[tuple[_T, str]] = []
    busy: set[int] = set()
    for op, n in ops:
        if op == "open":
            t = _T()
            if guard.open(t, f"10.0.0.{n % 3}"):  # type: ignore[arg-type]
                opened.append((t, f"10.0.0.{n % 3}"))
            else:
                assert t not in [o for o, _ in opened]
        elif opened:
            t, _ = opened[n % len(opened)]
            if op == "close":
                guard.close(t)  # type: ignore[arg-type]
                opened.remove((t, _))
                busy.discard(id(t))
            elif not t.aborted:
                guard.set_busy(t, op == "busy")  # type: ignore[arg-type]
                (busy.add if op == "busy" else busy.discard)(id(t))
        live = [(t, a) for t, a in opened if not t.aborted]
        assert len(guard) == len(live) <= 6
        assert all(guard.count(f"10.0.0.{i}") <= 3 for i in range(3))
        assert not any(t.aborted and id(t) in busy for t, _ in opened)


def test_a_reader_that_stops_reading_is_let_go() -> None:
    """A slow read holds a busy connection, which the caps never close: a stall deadline does."""

    async def scenario() -> tuple[int, int, int]:
        guard = ConnectionGuard(max_total=50, max_per_address=10, write_stall_s=1.0)
        async with _served(_big, guard=guard) as port:
            readers = []
            for _ in range(5):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.bind(("127.0.0.2", 0))
                s.setblocking(False)
                await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
                s.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
                readers.append(s)
            await asyncio.sleep(0.5)
            held = guard.count("127.0.0.2")
            for _ in range(100):  # bounded: 10 s
                if guard.count("127.0.0.2") == 0:
                    break
                await asyncio.sleep(0.1)
            for s in readers:
                s.close()
            return held, guard.count("127.0.0.2"), guard.figures.write_stalls

    held, left, stalls = asyncio.run(scenario())
    assert held == 5 and left == 0 and stalls == 5, (held, left, stalls)
