"""A hostile peer's answers end in NodeError, never RecursionError, KeyError or TypeError.

The signed client reads a refusal's JSON body for its code, and ``upload_blob`` reads the upload
status and each chunk's acknowledgement: what the other side sends there is untrusted too.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import nacl.signing
import pytest

from bcfl_cli.client import read_update
from bcfl_cli.client.blobs import upload_blob
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.errors import NodeError, UsageError
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.wire.refusal import Refusal

KEY = nacl.signing.SigningKey(b"\x07" * 32)
NESTED = b"[" * 4000


def _client(handler: httpx.MockTransport) -> SignedClient:
    return SignedClient(KEY, "http://peer.test/v1", retries=0, transport=handler)


def test_a_refusal_whose_body_nests_deep_is_a_peer_refusal() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(400, content=NESTED))
    with _client(transport) as client, pytest.raises(Refusal, match="http_400"):
        client.get("/status")


@pytest.mark.parametrize(
    "status",
    [NESTED, b"[]", b'{"complete": false}', b'{"chunk_size": [1], "received": 0}', b"null"],
    ids=["nested", "list", "no_fields", "list_field", "null"],
)
def test_a_hostile_upload_status_is_a_node_error(status: bytes, tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"x" * 1000)
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=status))
    with _client(transport) as client, pytest.raises(NodeError):
        upload_blob(client, digest, store)


def test_a_hostile_chunk_acknowledgement_is_a_node_error(tmp_path: Path) -> None:
    store = BlobStore(tmp_path)
    digest = store.put(b"x" * 1000)

    def handler(request: httpx.Request) -> httpx.Response:
        if request.method == "GET":
            return httpx.Response(200, json={"received": 0, "chunk_size": 65536, "complete": False})
        return httpx.Response(200, content=NESTED)

    with _client(httpx.MockTransport(handler)) as client, pytest.raises(NodeError):
        upload_blob(client, digest, store)


def test_a_sidecar_nested_deep_is_a_usage_error(tmp_path: Path) -> None:
    """An update's ``.json`` sidecar (it may come from anywhere) is parsed like peer JSON."""
    update = tmp_path / "round-1.safetensors"
    update.write_bytes(b"\0" * 16)
    for text in (NESTED, b'{"round": 1, "metrics": ' + NESTED + b"}", b"[1, 2]"):
        update.with_suffix(".json").write_bytes(text)
        with pytest.raises(UsageError):
            read_update(update)
