"""How a node serves HTTP (``server.http_config``), over a real socket."""

from __future__ import annotations

import asyncio

import httpx
from starlette.types import Receive, Scope, Send

from tests.node._node_harness import served


async def _echo_client(scope: Scope, receive: Receive, send: Send) -> None:
    body = str((scope.get("client") or ("?", 0))[0]).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def test_a_local_peer_cannot_claim_another_address() -> None:
    # The per-address rate limit keys on the connection's address; X-Forwarded-For from a
    # loopback peer (uvicorn trusts 127.0.0.1 by default) must not replace it.
    async def scenario() -> None:
        async with served(lambda _port: _echo_client) as url, httpx.AsyncClient() as client:
            response = await client.get(
                url, headers={"x-forwarded-for": "203.0.113.9", "forwarded": "for=1.2.3.4"}
            )
        assert response.text == "127.0.0.1"

    asyncio.run(scenario())
