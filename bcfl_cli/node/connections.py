"""Who holds the node's sockets, and for how long: connection accounting below the ASGI app.

uvicorn arms no deadline before a request's head is complete and answers 503 to everyone once
``limit_concurrency`` sockets are open, so a few hundred half-open sockets (a slow-loris run)
stopped every request, a member's signed POST included. The ASGI layers cannot help: they run
only once a head is complete. So the node serves HTTP through uvicorn's own protocol classes,
subclassed here to report to one ``ConnectionGuard``, which enforces:

- **no body before the verdict**: once a head is complete, the socket is not read again until
  the app asks for the body (the signature layer asks only once the head checked out) or has
  answered; what uvicorn holds of a refused body is the rest of the one read that carried the
  head (at most 256 KiB);
- a **head deadline**: a connection must deliver a complete request head within
  ``head_timeout_s`` of opening, and of the first byte of each later request on it (and
  whatever trails a response, like an unread body, starts that clock again); else it is closed;
- a **per-address cap** and a **total cap** on open connections. A connection is *idle* while
  it waits for a head (or between keep-alive requests) and *busy* while a request it sent runs
  or while it carries a WebSocket stream. At a cap, the oldest idle connection goes first (of
  the same address for the per-address cap; of the address holding the most connections for
  the total); only when none is idle is the new connection refused (closed at once);
- a **write-stall deadline**: a response the client stops reading (its socket's buffer full)
  for ``write_stall_s`` closes the connection, so a slow reader cannot hold a busy one.

An attacker thus holds at most ``max_per_address`` sockets per address, and even a spread-out
one cannot keep a member's new connection out, since every socket that has not completed a head
is evictable; the busy ones passed the head deadline, and a request with a body is refused on
its signature before the body is read (``auth.py``), so only members hold busy connections for
long. Open peer streams are busy: an attack never closes them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

log = logging.getLogger("bcfl.node.connections")

#: Seconds a connection has to deliver a complete request head (line and headers).
HEAD_TIMEOUT_S = 10.0
#: Seconds a response may stay stalled because the client does not read it (a slow read holds
#: a busy connection, which no cap would otherwise ever close).
WRITE_STALL_S = 30.0
#: Open connections from one address (the peers of a ten-node demo on one machine use ~80).
MAX_CONNECTIONS_PER_ADDRESS = 256
#: Open connections in all (the process's file limit is raised above it where it can be).
MAX_CONNECTIONS = 1024
#: File descriptors kept beside the connections (stores, blobs, outgoing peer connections).
RESERVED_FDS = 256
#: At most one warning line per this many seconds about refused or closed connections.
LOG_EVERY_S = 10.0


@dataclass(eq=False)
class _Conn:
    address: str
    transport: asyncio.BaseTransport
    busy: bool = False


@dataclass
class GuardFigures:
    """Counters for the log, status and tests."""

    refused: int = 0
    evicted: int = 0
    head_timeouts: int = 0
    write_stalls: int = 0
    peak: int = 0


@dataclass
class ConnectionGuard:
    """The node's table of open connections (see module docstring). Event-loop only."""

    max_total: int = MAX_CONNECTIONS
    max_per_address: int = MAX_CONNECTIONS_PER_ADDRESS
    head_timeout_s: float = HEAD_TIMEOUT_S
    write_stall_s: float = WRITE_STALL_S
    figures: GuardFigures = field(default_factory=GuardFigures)
    _conns: dict[asyncio.BaseTransport, _Conn] = field(default_factory=dict)  # oldest first
    _by_address: dict[str, dict[asyncio.BaseTransport, _Conn]] = field(default_factory=dict)
    _logged_at: float = -LOG_EVERY_S

    def __post_init__(self) -> None:
        if (
            min(self.max_total, self.max_per_address) < 1
            or min(self.head_timeout_s, self.write_stall_s) <= 0
        ):
            raise ValueError("connection caps and deadlines must be positive")

    def __len__(self) -> int:
        return len(self._conns)

    def count(self, address: str) -> int:
        return len(self._by_address.get(address, {}))

    def open(self, transport: asyncio.BaseTransport, address: str) -> bool:
        """Admit a new connection (idle); False when it must be closed at once.

        Idempotent: a WebSocket takes over its HTTP connection's transport, already counted.
        """
        if transport in self._conns:
            return True
        mine = self._by_address.get(address, {})
        if len(mine) >= self.max_per_address and not self._evict_one(mine.values()):
            return self._refuse(address, "its address holds too many connections")
        if len(self._conns) >= self.max_total and not self._evict_global():
            return self._refuse(address, "the node holds too many busy connections")
        conn = _Conn(address, transport)
        self._conns[transport] = conn
        self._by_address.setdefault(address, {})[transport] = conn
        self.figures.peak = max(self.figures.peak, len(self._conns))
        return True

    def set_busy(self, transport: asyncio.BaseTransport, busy: bool) -> None:
        conn = self._conns.get(transport)
        if conn is not None:
            conn.busy = busy

    def close(self, transport: asyncio.BaseTransport) -> None:
        """Forget a connection (closed by either side; unknown ones are ignored)."""
        conn = self._conns.pop(transport, None)
        if conn is None:
            return
        mine = self._by_address.get(conn.address)
        if mine is not None:
            mine.pop(transport, None)
            if not mine:
                del self._by_address[conn.address]

    def head_timed_out(self, address: str) -> None:
        self.figures.head_timeouts += 1
        self._warn(f"closed a connection from {address}: no complete request head in time")

    def write_stalled(self, address: str) -> None:
        self.figures.write_stalls += 1
        self._warn(f"closed a connection from {address}: it stopped reading its response")

    def _evict_one(self, candidates: Any) -> bool:
        for conn in candidates:  # insertion order: oldest first
            if not conn.busy:
                self.close(conn.transport)
                conn.transport.abort()
                self.figures.evicted += 1
                return True
        return False

    def _evict_global(self) -> bool:
        # the address holding the most connections pays first: that is where an attack is
        for address in sorted(self._by_address, key=self.count, reverse=True):
            if self._evict_one(list(self._by_address[address].values())):
                self._warn(f"the node is at {self.max_total} connections; closed an idle one")
                return True
        return False

    def _refuse(self, address: str, why: str) -> bool:
        self.figures.refused += 1
        self._warn(f"refused a connection from {address}: {why}")
        return False

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY_S:
            self._logged_at = now
            log.warning(
                "%s (so far: %d refused, %d idle closed, %d head timeouts, %d write stalls)",
                message,
                self.figures.refused,
                self.figures.evicted,
                self.figures.head_timeouts,
                self.figures.write_stalls,
            )


def _address(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple | list) and peer:
        return str(peer[0])
    return "unknown"


def guarded_protocols(
    guard: ConnectionGuard,
) -> tuple[type[HttpToolsProtocol], type[WebSocketsSansIOProtocol]]:
    """uvicorn's HTTP (httptools) and WebSocket (websockets sans-I/O) protocol classes, each
    reporting to ``guard``; pass them as ``http=`` and ``ws=`` of ``uvicorn.Config``."""

    class GuardedHttp(HttpToolsProtocol):
        _head_timer: asyncio.TimerHandle | None = None
        _stall_timer: asyncio.TimerHandle | None = None
        _guard_address = "unknown"

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._guard_address = _address(transport)
            if not guard.open(transport, self._guard_address):
                transport.abort()
                return
            self._arm_head_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_head_timer()
            self._cancel_stall_timer()
            if self.transport is not None:
                guard.close(self.transport)
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            # bytes while no request runs start (or continue) a head: the clock is on
            if self.cycle is None or self.cycle.response_complete:
                self._arm_head_timer()
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._cancel_head_timer()
            guard.set_busy(self.transport, True)
            super().on_headers_complete()
            if not self.parser.should_upgrade():
                # read no more of the body until the app asks for it, which the signature
                # layer does only once the head checked out: a stranger's body stays in the
                # kernel's buffers (uvicorn's receive, or the response's end, resumes reading)
                self.flow.pause_reading()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.pipeline:
                guard.set_busy(self.transport, False)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._stall_timer is None:
                self._stall_timer = self.loop.call_later(guard.write_stall_s, self._stalled)

        def resume_writing(self) -> None:
            self._cancel_stall_timer()
            super().resume_writing()

        def _cancel_stall_timer(self) -> None:
            if self._stall_timer is not None:
                self._stall_timer.cancel()
                self._stall_timer = None

        def _stalled(self) -> None:
            self._stall_timer = None
            if self.transport is not None and not self.transport.is_closing():
                guard.write_stalled(self._guard_address)
                self.transport.abort()

        def _arm_head_timer(self) -> None:
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(guard.head_timeout_s, self._head_late)

        def _cancel_head_timer(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_late(self) -> None:
            self._head_timer = None
            if self.transport is not None and not self.transport.is_closing():
                guard.head_timed_out(self._guard_address)
                self.transport.abort()

    class GuardedWebSocket(WebSocketsSansIOProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            if not guard.open(transport, _address(transport)):
                transport.abort()  # type: ignore[attr-defined]
                return
            guard.set_busy(transport, True)

        def connection_lost(self, exc: Exception | None) -> None:
            if self.transport is not None:
                guard.close(self.transport)
            super().connection_lost(exc)

    return GuardedHttp, GuardedWebSocket


def raise_file_limit(wanted: int) -> int:
    """Raise this process's soft limit on open files towards ``wanted`` (never above the hard
    limit); the soft limit in force after (0 where the platform has no such limit)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return 0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return int(soft) if soft != resource.RLIM_INFINITY else wanted


def node_guard(
    max_total: int = MAX_CONNECTIONS, max_per_address: int = MAX_CONNECTIONS_PER_ADDRESS
) -> ConnectionGuard:
    """The guard a node serves with: the total cap kept under the process's file limit."""
    files = raise_file_limit(max_total + RESERVED_FDS)
    total = max(16, min(max_total, files - RESERVED_FDS)) if files else max_total
    return ConnectionGuard(max_total=total, max_per_address=min(max_per_address, total))


__all__ = [
    "HEAD_TIMEOUT_S",
    "MAX_CONNECTIONS",
    "MAX_CONNECTIONS_PER_ADDRESS",
    "ConnectionGuard",
    "guarded_protocols",
    "node_guard",
]
