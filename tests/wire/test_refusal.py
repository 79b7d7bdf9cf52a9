"""The one refusal type: what a node answers and what a client raises carry the same code."""

from __future__ import annotations

import httpx
import nacl.signing
import pytest

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.errors import NodeError
from bcfl_cli.wire.refusal import UNREACHABLE, Refusal


def _client(handler: httpx.MockTransport) -> SignedClient:
    key = nacl.signing.SigningKey(b"\x07" * 32)
    return SignedClient(key, "http://node/v1", transport=handler, retries=1, backoff_s=0.0)


def test_a_refusal_keeps_the_nodes_code_status_and_reason() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": "not_member", "message": "ask to be admitted"})

    with _client(httpx.MockTransport(refuse)) as client, pytest.raises(Refusal) as info:
        client.get("/status")
    assert (info.value.status, info.value.code, info.value.kind) == (403, "not_member", "refused")
    assert info.value.answered and "ask to be admitted" in info.value.message
    assert isinstance(info.value, NodeError)  # the CLI root prints it as one line


def test_a_server_failure_is_kind_failed() -> None:
    def fail(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, json={"error": "internal", "message": "boom"})

    with _client(httpx.MockTransport(fail)) as client, pytest.raises(Refusal) as info:
        client.get("/status")
    assert (info.value.kind, info.value.code) == ("failed", "internal")


def test_no_answer_is_kind_unreachable_after_the_retries() -> None:
    tries = 0

    def down(request: httpx.Request) -> httpx.Response:
        nonlocal tries
        tries += 1
        raise httpx.ConnectError("connection refused", request=request)

    with _client(httpx.MockTransport(down)) as client, pytest.raises(Refusal) as info:
        client.get("/status")
    assert tries == 2
    assert (info.value.status, info.value.code, info.value.kind) == (0, UNREACHABLE, "unreachable")
    assert not info.value.answered and "no answer after 2 attempts" in info.value.message


def test_the_node_side_shape_carries_headers() -> None:
    refusal = Refusal("slow down", status=429, code="rate_limited", headers={"Retry-After": "1"})
    assert refusal.kind == "refused" and refusal.headers == {"Retry-After": "1"}
