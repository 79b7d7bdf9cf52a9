"""TCP relays that record every byte (issue 22): an eavesdropper, or a man in the middle.

``Recorder`` forwards connections to a target port and keeps what went each way (bounded);
``FakeServer`` answers TLS handshakes with a certificate of its choosing and records any byte
the caller sends after the handshake (a caller that pins must send none). Threads, plain
sockets, stopped by ``close()``; every wait is bounded.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import threading
from pathlib import Path

MAX_RECORDED = 256 * 1024 * 1024
IDLE_S = 60.0


class _Listener:
    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.5)
        self.port: int = self.sock.getsockname()[1]
        self.closed = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _spawn(self, target: object, *args: object) -> None:
        t = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        t.start()
        self._threads.append(t)

    def _track(self, conn: socket.socket) -> None:
        with self._lock:
            self._conns.append(conn)

    def start(self) -> _Listener:
        self._spawn(self._accept_loop)
        return self

    def _accept_loop(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._track(conn)
            self._spawn(self.handle, conn)

    def handle(self, conn: socket.socket) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.closed.set()
        with contextlib.suppress(OSError):
            self.sock.close()
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
                with contextlib.suppress(OSError):
                    conn.close()
        for t in self._threads:
            t.join(5)


class Recorder(_Listener):
    """Forwards to 127.0.0.1:``target``; ``recorded`` holds both directions' bytes."""

    def __init__(self, target: int) -> None:
        super().__init__()
        self.target = target
        self.recorded = bytearray()
        self.connections = 0

    def handle(self, conn: socket.socket) -> None:
        try:
            upstream = socket.create_connection(("127.0.0.1", self.target), timeout=10)
        except OSError:
            conn.close()
            return
        self._track(upstream)
        self.connections += 1
        self._spawn(self._pump, conn, upstream)
        self._pump(upstream, conn)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        src.settimeout(IDLE_S)
        try:
            while not self.closed.is_set():
                data = src.recv(65536)
                if not data:
                    break
                with self._lock:
                    if len(self.recorded) < MAX_RECORDED:
                        self.recorded += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)


class FakeServer(_Listener):
    """A man in the middle: completes TLS with ``cert_file``/``key_file``, then listens."""

    def __init__(self, cert_file: Path, key_file: Path, password: bytes | None = None) -> None:
        super().__init__()
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert_file, key_file, password=password)
        self.handshakes = 0
        self.received = bytearray()  # application bytes after a handshake: must stay empty

    def handle(self, conn: socket.socket) -> None:
        conn.settimeout(10)
        try:
            with self.ctx.wrap_socket(conn, server_side=True) as tls:
                self.handshakes += 1
                while not self.closed.is_set():
                    data = tls.recv(65536)
                    if not data:
                        break
                    self.received += data
        except (OSError, ssl.SSLError):
            pass
