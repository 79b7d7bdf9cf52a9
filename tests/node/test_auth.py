"""The ASGI signature layer: every refusal is a clear 4xx and nothing downstream runs."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import httpx
import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

with warnings.catch_warnings():
    # starlette 1.x prefers the httpx2 fork for its TestClient; plain httpx still works
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.errors import NodeError
from bcfl_cli.node.auth import SignatureAuth, peer_did
from bcfl_cli.node.limits import NodeLimits, NonceCache, TokenBucketLimiter
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.wire.httpsig import (
    RequestView,
    SignatureError,
    content_digest,
    sign_request,
    verify_request,
)
from bcfl_cli.wire.refusal import Refusal

BASE = "http://testserver"


class _App:
    def __init__(self, limits: NodeLimits | None = None) -> None:
        self.member = nacl.signing.SigningKey.generate()
        self.member_did = did_from_public_key(bytes(self.member.verify_key))
        self.members = {self.member_did}
        self.calls: list[tuple[str, str | None, bytes]] = []

        async def action(request: Request) -> JSONResponse:
            body = await request.body()
            self.calls.append((request.url.path, peer_did(request), body))
            return JSONResponse({"ok": True, "by": peer_did(request)})

        async def status(request: Request) -> JSONResponse:
            return JSONResponse({"by": peer_did(request)})

        inner = Starlette(
            routes=[
                Route("/tx", action, methods=["POST"]),
                Route("/status", status, methods=["GET"]),
            ]
        )
        self.asgi = SignatureAuth(
            inner, is_member=self.members.__contains__, limits=limits or NodeLimits()
        )
        self.http = TestClient(self.asgi, base_url=BASE)


@pytest.fixture
def app() -> Iterator[_App]:
    built = _App()
    with built.http:
        yield built


def _signed_headers(
    key: nacl.signing.SigningKey, body: bytes | None, url: str = f"{BASE}/tx", **kw: object
) -> dict[str, str]:
    headers = {"host": "testserver", "content-type": "application/json"}
    headers.update(sign_request(key, "POST", url, headers, body, **kw))  # type: ignore[arg-type]
    return {k.lower(): v for k, v in headers.items()}


def _refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    payload = response.json()
    assert payload["error"] == code
    assert payload["message"] and "\n" not in payload["message"]


def test_member_signed_request_passes(app: _App) -> None:
    body = b'{"x":1}'
    response = app.http.post("/tx", content=body, headers=_signed_headers(app.member, body))
    assert response.status_code == 200
    assert response.json()["by"] == app.member_did
    assert app.calls == [("/tx", app.member_did, body)]


def test_signed_client_through_the_layer(app: _App) -> None:
    client = SignedClient(app.member, BASE, transport=app.http._transport)  # type: ignore[arg-type]
    with client:
        assert client.post("/tx", json_body={"a": 1}).json()["by"] == app.member_did
        assert client.get("/status").json()["by"] == app.member_did
        assert client.post("/tx", params={"q": "1 2"}).status_code == 200
        stranger = SignedClient(
            nacl.signing.SigningKey.generate(), BASE, transport=client._client._transport
        )
        with pytest.raises(Refusal) as info:
            stranger.post("/tx", json_body={"a": 1})
        assert info.value.status == 403 and info.value.code == "not_member"
    assert len(app.calls) == 2


def test_unsigned_state_change_refused(app: _App) -> None:
    _refused(app.http.post("/tx", content=b"{}"), 401, "missing_signature")
    assert app.calls == []


def test_unsigned_get_is_public(app: _App) -> None:
    response = app.http.get("/status")
    assert response.status_code == 200 and response.json() == {"by": None}


def test_forged_signature(app: _App) -> None:
    body = b'{"x":1}'
    headers = _signed_headers(app.member, body)
    forger = nacl.signing.SigningKey.generate()
    forged = _signed_headers(forger, body)
    # the forger's signature bytes under the member's keyid
    headers["signature"] = forged["signature"]
    _refused(app.http.post("/tx", content=body, headers=headers), 401, "bad_signature")
    assert app.calls == []


def test_replayed_request(app: _App) -> None:
    body = b"{}"
    headers = _signed_headers(app.member, body)
    assert app.http.post("/tx", content=body, headers=headers).status_code == 200
    _refused(app.http.post("/tx", content=body, headers=headers), 401, "replay")
    assert len(app.calls) == 1


def test_non_member(app: _App) -> None:
    other = nacl.signing.SigningKey.generate()
    _refused(
        app.http.post("/tx", content=b"{}", headers=_signed_headers(other, b"{}")),
        403,
        "not_member",
    )
    # a member removed is refused from the next request on
    app.members.discard(app.member_did)
    _refused(
        app.http.post("/tx", content=b"{}", headers=_signed_headers(app.member, b"{}")),
        403,
        "not_member",
    )
    assert app.calls == []


@pytest.mark.parametrize("offset", [-31, 31, -3600])
def test_stale_created(app: _App, offset: int) -> None:
    headers = _signed_headers(app.member, b"{}", created=int(time.time()) + offset)
    _refused(app.http.post("/tx", content=b"{}", headers=headers), 401, "stale")
    assert app.calls == []


def test_digest_mismatch(app: _App) -> None:
    headers = _signed_headers(app.member, b'{"amount":1}')
    _refused(app.http.post("/tx", content=b'{"amount":9}', headers=headers), 401, "digest_mismatch")
    assert app.calls == []


def test_large_body_digest_checked_off_the_loop() -> None:
    """A body past THREADED_DIGEST_BYTES is digest-checked in a thread: the same verdicts."""
    from bcfl_cli.node.auth import THREADED_DIGEST_BYTES

    built = _App(NodeLimits(max_body_bytes=4 * THREADED_DIGEST_BYTES))
    body = b"a" * (2 * THREADED_DIGEST_BYTES)
    with built.http:
        tampered = body[:-1] + b"b"
        headers = _signed_headers(built.member, body)
        _refused(built.http.post("/tx", content=tampered, headers=headers), 401, "digest_mismatch")
        assert built.calls == []
        response = built.http.post("/tx", content=body, headers=_signed_headers(built.member, body))
        assert response.status_code == 200
        assert built.calls == [("/tx", built.member_did, body)]


def test_large_body_digest_checked_on_its_own_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Not on the loop's default executor, which a node's pushes and downloads fill: a chunk's
    acknowledgement must never wait for them (two nodes pushing to each other would deadlock)."""
    import bcfl_cli.node.auth as auth
    from bcfl_cli.node.auth import THREADED_DIGEST_BYTES

    threads: list[str] = []
    check = auth.check_body

    def recording(*args: Any, **kwargs: Any) -> None:
        threads.append(threading.current_thread().name)
        check(*args, **kwargs)

    monkeypatch.setattr(auth, "check_body", recording)
    built = _App(NodeLimits(max_body_bytes=4 * THREADED_DIGEST_BYTES))
    body = b"a" * (2 * THREADED_DIGEST_BYTES)
    with built.http:
        response = built.http.post("/tx", content=body, headers=_signed_headers(built.member, body))
        assert response.status_code == 200
    assert len(threads) == 1 and threads[0].startswith("bcfl-digest"), threads


def test_oversized_body() -> None:
    built = _App(NodeLimits(max_body_bytes=1024))
    body = b"x" * 2048
    with built.http:
        response = built.http.post("/tx", content=body, headers=_signed_headers(built.member, body))
        _refused(response, 413, "body_too_large")

        # no Content-Length: the streamed body is cut at the cap too
        def gen() -> Iterator[bytes]:
            yield body[:1000]
            yield body[1000:]

        headers = _signed_headers(built.member, body)
        response = built.http.post("/tx", content=gen(), headers=headers)
        _refused(response, 413, "body_too_large")
    assert built.calls == []


@pytest.mark.parametrize(
    ("name", "value", "code"),
    [
        ("signature-input", "bcfl=(((", "malformed_signature"),
        ("signature-input", 'bcfl=("@method");created=1;keyid=3', "malformed_signature"),
        ("signature-input", "a" * 4000, "malformed_signature"),
        ("signature", "bcfl=:not base64:", "malformed_signature"),
        ("signature", "bcfl=:AAAA:", "malformed_signature"),
        ("signature", "other=:AAAA:", "malformed_signature"),
        ("content-digest", "sha-256=abc", "malformed_signature"),
        ("content-digest", "md5=:AAAA:", "malformed_signature"),
    ],
)
def test_malformed_signature_headers(app: _App, name: str, value: str, code: str) -> None:
    headers = _signed_headers(app.member, b"{}")
    headers = {k.lower(): v for k, v in headers.items()}
    headers[name] = value
    _refused(app.http.post("/tx", content=b"{}", headers=headers), 401, code)
    assert app.calls == []


def test_uncovered_query_and_wrong_path(app: _App) -> None:
    headers = _signed_headers(app.member, b"{}")
    _refused(
        app.http.post("/tx?evil=1", content=b"{}", headers=headers), 401, "uncovered_component"
    )
    headers = _signed_headers(app.member, b"{}", url=f"{BASE}/other")
    _refused(app.http.post("/tx", content=b"{}", headers=headers), 401, "bad_signature")
    assert app.calls == []


def test_bad_signature_on_get_is_refused(app: _App) -> None:
    headers = {"signature-input": "bcfl=(", "signature": "bcfl=:AAAA:"}
    _refused(app.http.get("/status", headers=headers), 401, "malformed_signature")


def test_rate_limit_per_peer() -> None:
    built = _App(NodeLimits(rate_per_s=1, burst=2))
    with built.http:
        codes = [
            built.http.post(
                "/tx", content=b"{}", headers=_signed_headers(built.member, b"{}")
            ).status_code
            for _ in range(4)
        ]
    assert codes[:2] == [200, 200] and codes[-1] == 429


def test_token_bucket_and_nonce_cache_are_bounded() -> None:
    now = [0.0]
    bucket = TokenBucketLimiter(1.0, 2, max_keys=3, clock=lambda: now[0])
    assert bucket.acquire("a") == 0 and bucket.acquire("a") == 0
    assert bucket.acquire("a") == pytest.approx(1.0)
    now[0] += 1.0
    assert bucket.acquire("a") == 0
    for key in "bcdef":
        bucket.acquire(key)
    assert len(bucket) == 3

    cache = NonceCache(30, max_entries=3, per_member=3, clock=lambda: 1000.0)  # one share
    for i in range(3):
        assert cache.check_and_add("k", f"n{i}", 990 + i) is None
    assert cache.check_and_add("k", "n1", 995) is not None  # replay
    assert cache.check_and_add("k", "n3", 995) is None  # evicts n0 (created 990)
    assert len(cache) == 3
    assert cache.check_and_add("k", "n0", 990) is not None  # evicted, but below the floor
    assert cache.check_and_add("k", "n9", 1001) is None


def test_content_digest_header_is_rfc9530(app: _App) -> None:
    headers = _signed_headers(app.member, b"{}")
    assert headers["content-digest"] == content_digest(b"{}")
    assert headers["content-digest"].startswith("sha-256=:")


def test_authority_pinning() -> None:
    built = _App()
    built.asgi.authorities = frozenset({"node-a.example:8000"})
    with built.http:
        response = built.http.post(
            "/tx", content=b"{}", headers=_signed_headers(built.member, b"{}")
        )
        _refused(response, 401, "wrong_authority")
    assert built.calls == []


def test_client_retries_re_sign_and_give_up_clearly() -> None:
    key = nacl.signing.SigningKey.generate()
    seen: list[str] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["signature-input"])
        if len(seen) == 1:
            raise httpx.ConnectError("refused", request=request)
        if len(seen) == 2:
            return httpx.Response(503, headers={"Retry-After": "0"})
        return httpx.Response(200, json={"ok": True})

    with SignedClient(key, BASE, transport=httpx.MockTransport(flaky), backoff_s=0.001) as client:
        assert client.post("/tx", json_body={"a": 1}).json() == {"ok": True}
    assert len(seen) == 3 and len(set(seen)) == 3  # every attempt signed afresh (new nonce)

    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    down_client = SignedClient(
        key, BASE, transport=httpx.MockTransport(down), retries=2, backoff_s=0.001
    )
    with down_client, pytest.raises(NodeError, match="no answer after 3 attempts") as info:
        down_client.get("/status")
    assert info.value.hint

    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": "not_member", "message": "ask to be admitted"})

    refusing = SignedClient(key, BASE, transport=httpx.MockTransport(refuse))
    with refusing, pytest.raises(Refusal, match="not_member.*ask to be admitted"):
        refusing.post("/tx", content=b"{}")


@settings(max_examples=40, deadline=None)
@given(
    body=st.binary(max_size=512),
    path=st.text(alphabet="abcxyz0129/-_.~%", min_size=0, max_size=30),
    query=st.text(alphabet="abc=&%20+", max_size=20),
    flip=st.integers(min_value=0, max_value=10_000),
)
def test_sign_verify_roundtrip_and_any_body_change_fails(
    body: bytes, path: str, query: str, flip: int
) -> None:
    key = nacl.signing.SigningKey.generate()
    url = f"http://n.example/{path}" + (f"?{query}" if query else "")
    headers = {"host": "n.example"}
    headers.update(sign_request(key, "PUT", url, headers, body))
    view = RequestView.from_url("PUT", url, headers)
    assert verify_request(view, body).keyid == did_from_public_key(bytes(key.verify_key))
    if body:
        changed = bytearray(body)
        changed[flip % len(body)] ^= 1
        with pytest.raises(SignatureError):
            verify_request(view, bytes(changed))
