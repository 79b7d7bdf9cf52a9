"""The node's TLS rules in one process (issue 22): pins, refusals, clear text, commands."""

from __future__ import annotations

import asyncio
import json
import os
import warnings

import aiohttp
import httpx
import nacl.signing
import pytest
from aiohttp import web

from bcfl_cli.home import Home
from bcfl_cli.identity.tls_cert import certificate_from_seed, generate_certificate
from bcfl_cli.node.blob_routes import BlobRoutes
from bcfl_cli.node.tls import (
    PinTable,
    TlsRefused,
    TransportTrust,
    check_clear_text,
    command_verify,
    is_loopback,
)
from bcfl_cli.store.blobs import BlobStore

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette 1.x nudges towards httpx2 for its TestClient
    from starlette.testclient import TestClient

ALICE, BOB = "did:key:alice", "did:key:bob"


def test_pin_table_verdicts():
    a, b, x = (certificate_from_seed(bytes([i]) * 32) for i in (1, 2, 3))
    table = PinTable()
    table.update({ALICE: a.fingerprint, BOB: b.fingerprint})
    assert table.verdict("https://a", a.der, None) == ALICE
    assert table.verdict("https://a", a.der, ALICE) == ALICE
    with pytest.raises(TlsRefused) as info:
        table.verdict("https://a", b.der, ALICE)
    assert info.value.reason == "certificate_of_other_member" and "https://a" in info.value.message
    with pytest.raises(TlsRefused) as info:
        table.verdict("https://x", x.der, None)
    assert info.value.reason == "certificate_not_pinned" and info.value.peer == "https://x"


@pytest.mark.parametrize(
    ("url", "loopback"),
    [
        ("http://127.0.0.1:7420", True),
        ("http://127.9.9.9:1", True),
        ("http://[::1]:7420", True),
        ("http://localhost:7420", True),
        ("http://10.0.0.2:7420", False),
        ("http://node.example:7420", False),
        ("http://127.0.0.1.example:7420", False),
    ],
)
def test_clear_text_only_to_loopback(url, loopback):
    assert is_loopback(url) is loopback
    if loopback:
        check_clear_text(url, allow=False)
    else:
        with pytest.raises(TlsRefused, match="clear_text"):
            check_clear_text(url, allow=False)
    check_clear_text(url, allow=True)
    check_clear_text(url.replace("http://", "https://"), allow=False)


async def _serve(cert, handler_text: str = "ok"):
    trust = TransportTrust("pinned", certificate=cert)

    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text=handler_text)

    app = web.Application()
    app.router.add_get("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=trust.server_context())
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, trust, f"https://127.0.0.1:{port}"


def test_callers_accept_exactly_the_pinned_certificate_and_follow_a_rotation():
    first, second = certificate_from_seed(b"\x11" * 32), certificate_from_seed(b"\x12" * 32)

    async def main() -> None:
        runner, server, url = await _serve(first)
        caller = TransportTrust("pinned")
        caller.pins.update({ALICE: first.fingerprint})
        try:
            async with (
                aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(ssl=caller.aiohttp_ssl(url, lambda: ALICE))
                ) as session,
                session.get(url) as response,
            ):
                assert await response.text() == "ok"
            assert caller.link_view(url) == {
                "encrypted": True,
                "verified": f"pinned:{ALICE}",
                "tls_refused": None,
            }
            verify = await asyncio.to_thread(caller.httpx_verify, url, ALICE)
            answer = await asyncio.to_thread(lambda: httpx.get(url, verify=verify))
            assert answer.text == "ok"
            # the server rotates; a caller that still pins the first certificate refuses it
            server.take_up(second)
            async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=caller.aiohttp_ssl(url, lambda: ALICE))
            ) as session:
                with pytest.raises(TlsRefused, match="certificate_not_pinned"):
                    await session.get(url)
            assert "certificate_not_pinned" in str(caller.link_view(url)["tls_refused"])
            # the chain pins the second: accepted again, with no restart of the server
            caller.pins.update({ALICE: second.fingerprint})
            verify = await asyncio.to_thread(caller.httpx_verify, url, ALICE)
            answer = await asyncio.to_thread(lambda: httpx.get(url, verify=verify))
            assert answer.text == "ok"
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_ca_mode_verifies_hostnames_against_the_bundle():
    trust = TransportTrust("ca")
    ctx = trust.ca_context()
    assert ctx.check_hostname and ctx.verify_mode.name == "CERT_REQUIRED"


def test_a_ca_mode_refusal_is_named_for_status_and_cleared_by_a_good_link():
    trust = TransportTrust("ca")
    peer = "https://127.0.0.1:9"
    refused = trust.refuse(peer, "ca_verify_failed", "unable to get local issuer certificate")
    assert isinstance(refused, TlsRefused) and refused.reason == "ca_verify_failed"
    shown = trust.link_view(peer)
    assert shown["encrypted"] is False and shown["verified"] == "none"
    assert peer in str(shown["tls_refused"]) and "ca_verify_failed" in str(shown["tls_refused"])
    trust.note_link(peer)  # the peer now presents a certificate the bundle vouches for
    assert trust.link_view(peer) == {"encrypted": True, "verified": "ca", "tls_refused": None}


def test_blob_route_refuses_clear_text_off_loopback(tmp_path):
    store = BlobStore(tmp_path / "blobs")
    digest = store.put(b"model bytes")
    strict = BlobRoutes(store, allow_clear_text=False)
    from starlette.applications import Starlette

    app = Starlette(routes=strict.routes)
    far = TestClient(app, client=("10.1.2.3", 5000))
    refused = far.get(f"/blobs/{digest}")
    assert refused.status_code == 403 and refused.json()["error"] == "clear_text"
    near = TestClient(app, client=("127.0.0.1", 5000))
    assert near.get(f"/blobs/{digest}").content == b"model bytes"
    lenient = TestClient(
        Starlette(routes=BlobRoutes(store, allow_clear_text=True).routes), client=("10.1.2.3", 1)
    )
    assert lenient.get(f"/blobs/{digest}").content == b"model bytes"


def test_a_command_trusts_its_own_nodes_certificate_only(tmp_path, monkeypatch):
    home = Home.resolve(tmp_path / "home").ensure()
    key = nacl.signing.SigningKey(os.urandom(32))
    generate_certificate(home, key)
    home.node_dir.mkdir()
    record = {"url": "https://127.0.0.1:7420", "listen": "127.0.0.1:7420", "tls": True}
    (home.node_dir / "node.json").write_text(json.dumps(record))
    own = command_verify(home, "https://127.0.0.1:7420")
    assert own is not None and own.check_hostname is False
    assert own.cert_store_stats()["x509"] == 1
    other = command_verify(home, "https://other.example:7420")
    assert other is not None and other.check_hostname is True
    assert command_verify(home, "http://127.0.0.1:7420") is None
    # during a rotation the next certificate is trusted too
    generate_certificate(home, key, next_key=True)
    assert command_verify(home, "https://127.0.0.1:7420").cert_store_stats()["x509"] == 2  # type: ignore[union-attr]


def test_join_holds_the_node_to_the_fingerprint_given_with_the_genesis():
    good, bad = certificate_from_seed(b"\x21" * 32), certificate_from_seed(b"\x22" * 32)

    async def main() -> None:
        runner, _server, url = await _serve(good)
        try:
            ctx = await asyncio.to_thread(command_verify, None, url, pin=good.fingerprint)
            answer = await asyncio.to_thread(lambda: httpx.get(url, verify=ctx))
            assert answer.text == "ok"
            with pytest.raises(TlsRefused, match="certificate_not_pinned"):
                await asyncio.to_thread(command_verify, None, url, pin=bad.fingerprint)
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_a_trust_mode_decision_drops_the_sessions_made_under_the_old_mode():
    from bcfl_cli.node.peers import Peers

    trust = TransportTrust("pinned")
    peers = Peers(
        nacl.signing.SigningKey(b"\x31" * 32),
        ["https://127.0.0.1:1"],
        self_url="https://127.0.0.1:2",
        trust=trust,
    )

    async def main() -> None:
        peer = next(iter(peers))
        pinned = peers._client_for(peer)
        assert isinstance(pinned.connector._ssl, aiohttp.Fingerprint)  # type: ignore[union-attr]
        trust.set_mode("ca")
        assert peers._clients == {}
        verified = peers._client_for(peer)
        assert verified is not pinned and verified.connector._ssl is trust.ca_context()  # type: ignore[union-attr]
        await asyncio.sleep(0)  # let the old session close
        assert pinned.closed
        await peers.close()

    asyncio.run(main())
