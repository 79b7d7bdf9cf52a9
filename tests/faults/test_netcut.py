"""The cut-off proxy itself: a cut node's connections go nowhere, both ways, until healed."""

from __future__ import annotations

import socket
import socketserver
import threading
from collections.abc import Iterator

import pytest

from tests.faults.netcut import NetCut

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


class _Answer(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        buffer = b""
        while chunk := self.request.recv(4096):
            buffer += chunk
            while b"\r\n\r\n" in buffer:
                _, buffer = buffer.split(b"\r\n\r\n", 1)
                self.request.sendall(OK)


@pytest.fixture
def net() -> Iterator[NetCut]:
    servers = {}
    for name in ("a", "b"):
        server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _Answer)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers[name] = server
    cut = NetCut(
        {n: s.server_address[1] for n, s in servers.items()}, {"a": "did:key:a", "b": "did:key:b"}
    )
    try:
        yield cut
    finally:
        while OPENED:
            OPENED.pop().close()
        cut.close()
        for server in servers.values():
            server.shutdown()
            server.server_close()


OPENED: list[socket.socket] = []


def _open(net: NetCut, target: str) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", net.ports[target]), timeout=0.5)
    OPENED.append(s)
    return s


def _ask(s: socket.socket, sender: str) -> bytes | None:
    """One request signed by ``sender``: its answer, or None when nothing came back."""
    s.sendall(f'GET / HTTP/1.1\r\nSignature-Input: s=();keyid="did:key:{sender}"\r\n\r\n'.encode())
    try:
        return s.recv(4096)
    except TimeoutError:
        return None


def test_a_cut_node_neither_reaches_nor_is_reached_until_healed(net: NetCut) -> None:
    before = _open(net, "b")
    assert _ask(before, "a") == OK
    net.cut_off("a")
    assert _ask(before, "a") is None  # an open connection from the cut node: blackholed
    assert _ask(_open(net, "b"), "a") is None  # a new one from it
    assert _ask(_open(net, "a"), "b") is None  # and to it
    other = _open(net, "b")
    assert _ask(other, "b") == OK  # what does not involve it still flows
    net.heal("a")
    assert before.recv(4096) == b""  # what was blackholed is closed, as after a real cut
    assert _ask(_open(net, "b"), "a") == OK
    assert _ask(_open(net, "a"), "b") == OK
    assert net.dropped_bytes > 0
