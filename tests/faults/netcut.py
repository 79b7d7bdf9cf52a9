"""Cut a node off the network and heal it, without root: a signed-request-aware TCP proxy.

A real partition needs a firewall rule (root). Here every node is reached through its own
proxy (``bcfl node --advertise`` names it, so the signatures' ``@authority`` is the proxy's)
and reaches its peers through theirs. Every request a node sends to a peer is signed with
its did as ``keyid`` (RFC 9421), and one TCP connection only ever carries one node's requests,
so a proxy knows who is on each connection from its first request head. Cutting a node off
blackholes every connection to it or from it, open or new: bytes are read and dropped, nothing
is answered, nothing is refused (what a dropped link looks like: the peers time out). Healing
closes the blackholed connections (what they carried is lost, as after a real cut) and
forwards again. The test's own status reads go to the nodes' own ports and are never cut.
"""

from __future__ import annotations

import asyncio
import functools
import re
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import Any

from bcfl_cli.demo.launcher import free_ports

MAX_HEAD = 64 * 1024
KEYID = re.compile(rb'keyid="([^"]{1,200})"')


@dataclass(eq=False)
class _Link:
    sender: str | None  # the name of the node on the client side, if its request was signed
    target: str
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    blocked: bool = False


class NetCut:
    """One proxy per node, on free loopback ports, run by an event loop in its own thread."""

    def __init__(self, ports: Mapping[str, int], dids: Mapping[str, str]) -> None:
        self.upstream = dict(ports)
        self.names_by_did = {did: name for name, did in dids.items()}
        self.ports = dict(zip(self.upstream, free_ports(len(self.upstream)), strict=True))
        self._cut: set[str] = set()
        self._links: set[_Link] = set()
        self.dropped_bytes = 0
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.Server] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._start())

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.ports[name]}"

    def cut_off(self, name: str) -> None:
        """Blackhole every connection to or from ``name`` until ``heal``."""
        self._call(self._cut_off(name))

    def heal(self, name: str) -> None:
        """Close the connections that were blackholed and forward again."""
        self._call(self._heal(name))

    def close(self) -> None:
        if self._loop.is_closed():
            return
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    # --- inside the loop ------------------------------------------------------------------------
    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=10)

    async def _start(self) -> None:
        for name, port in self.ports.items():
            server = await asyncio.start_server(
                functools.partial(self._serve, target=name), "127.0.0.1", port
            )
            self._servers.append(server)

    async def _stop(self) -> None:
        for server in self._servers:
            server.close()
        for link in list(self._links):
            self._close(link)

    async def _cut_off(self, name: str) -> None:
        self._cut.add(name)
        for link in self._links:
            if name in (link.sender, link.target):
                link.blocked = True

    async def _heal(self, name: str) -> None:
        self._cut.discard(name)
        for link in list(self._links):
            if link.blocked and not self._isolated(link.sender, link.target):
                self._close(link)

    def _isolated(self, sender: str | None, target: str) -> bool:
        return target in self._cut or (sender is not None and sender in self._cut)

    def _close(self, link: _Link) -> None:
        self._links.discard(link)
        for writer in link.writers:
            writer.close()

    async def _serve(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, target: str
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=30)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
            writer.close()
            return
        found = KEYID.search(head[:MAX_HEAD])
        sender = self.names_by_did.get(found.group(1).decode()) if found else None
        link = _Link(sender, target, [writer], blocked=self._isolated(sender, target))
        self._links.add(link)
        if link.blocked:
            self.dropped_bytes += len(head)
            await self._pipe(reader, None, link)  # a blackhole until healed
            return
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream[target])
        except OSError:
            self._close(link)
            return
        link.writers.append(up_writer)
        up_writer.write(head)
        await asyncio.gather(
            self._pipe(reader, up_writer, link), self._pipe(up_reader, writer, link)
        )

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None, link: _Link
    ) -> None:
        try:
            while data := await reader.read(65536):
                if link.blocked or writer is None:
                    self.dropped_bytes += len(data)
                    continue
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            if not link.blocked:  # a blackholed link stays open until healed: no FIN gets out
                self._close(link)
