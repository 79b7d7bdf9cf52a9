"""The signing Auth flow: every request, each retry afresh, verifies as RFC 9421 on the node
side; a large body sent as a one-shot stream is signed by its exact bytes."""

from __future__ import annotations

import httpx
import nacl.signing

from bcfl_cli.client.transport import RequestSigner, SignedClient
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.wire.httpsig import RequestView, verify_request

KEY = nacl.signing.SigningKey(b"\x05" * 32)
DID = did_from_public_key(bytes(KEY.verify_key))


def _verified(request: httpx.Request, body: bytes | None) -> str:
    view = RequestView.from_url(request.method, str(request.url), dict(request.headers))
    return verify_request(view, body).keyid


def test_each_attempt_is_signed_afresh_and_verifies() -> None:
    seen: list[tuple[str, str]] = []

    def flaky(request: httpx.Request) -> httpx.Response:
        body = request.read()
        seen.append((_verified(request, body), request.headers["signature"]))
        if len(seen) == 1:
            return httpx.Response(503)
        return httpx.Response(200, json={"ok": True})

    with SignedClient(
        KEY, "http://node/v1", transport=httpx.MockTransport(flaky), backoff_s=0
    ) as c:
        assert c.post("/txs", json_body={"tx": {"a": 1}}).json() == {"ok": True}
    assert [did for did, _ in seen] == [DID, DID]
    assert seen[0][1] != seen[1][1]  # a new nonce and signature for the retry


def test_a_large_body_is_signed_by_its_bytes_and_not_kept_on_the_request() -> None:
    big = bytes(range(256)) * 1024  # 256 KiB: over the inline limit, sent as a stream
    kept: list[httpx.Request] = []

    def store(request: httpx.Request) -> httpx.Response:
        assert _verified(request, request.read()) == DID
        kept.append(request)
        return httpx.Response(200)

    with SignedClient(KEY, "http://node/v1", transport=httpx.MockTransport(store)) as client:
        client.put("/blobs/x/chunks/0", content=big)
    assert kept and all("bcfl.signed_body" not in r.extensions for r in kept)


def test_a_get_without_body_is_signed_without_content_digest() -> None:
    def read(request: httpx.Request) -> httpx.Response:
        assert "content-digest" not in request.headers
        assert _verified(request, None) == DID
        return httpx.Response(200, json={})

    with httpx.Client(auth=RequestSigner(KEY), transport=httpx.MockTransport(read)) as plain:
        assert plain.get("http://node/v1/status").status_code == 200
