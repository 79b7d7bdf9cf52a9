"""Upload slots are per member (issue 16, item 9): one member holding partial uploads, or
writing into the partial file of a blob another member uploads, blocks no one else."""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest
from starlette.applications import Starlette

from bcfl_cli.client.blobs import upload_blob
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.node.auth import SignatureAuth
from bcfl_cli.node.blob_routes import MAX_UPLOADS_PER_MEMBER, STALE_UPLOAD_S, BlobRoutes
from bcfl_cli.node.limits import NodeLimits
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.wire.refusal import Refusal

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CHUNK = 64 * 1024
MB = 1024 * 1024


class _Node:
    """Blob routes of one node with two members; ``now`` is the routes' clock."""

    def __init__(self, root: Path) -> None:
        self.keys = [nacl.signing.SigningKey.generate() for _ in range(2)]
        members = {did_from_public_key(bytes(k.verify_key)) for k in self.keys}
        self.store = BlobStore(root / "server")
        self.now = time.time()
        routes = BlobRoutes(self.store, max_blob_bytes=MB, chunk_size=CHUNK, clock=lambda: self.now)
        app = SignatureAuth(
            Starlette(routes=routes.routes),
            is_member=members.__contains__,
            limits=NodeLimits(max_body_bytes=CHUNK + 64 * 1024),
        )
        self.http = TestClient(app, base_url="http://peer")
        self.mallory, self.alice = (
            SignedClient(k, "http://peer", transport=self.http._transport, retries=0)  # type: ignore[arg-type]
            for k in self.keys
        )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    built = _Node(tmp_path)
    with built.http, built.mallory, built.alice:
        yield built


def _data(size: int, seed: int) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


def _start_upload(client: SignedClient, data: bytes) -> None:
    """Send the first chunk of a multi-chunk blob and leave it there."""
    digest = hashlib.sha256(data).hexdigest()
    client.put(f"/blobs/{digest}/chunks/0", params={"size": len(data)}, content=data[:CHUNK])


def test_one_member_holding_partial_uploads_blocks_only_itself(node: _Node, tmp_path: Path) -> None:
    held = 0
    for seed in range(20):  # more than the old shared pool of 16
        try:
            _start_upload(node.mallory, _data(3 * CHUNK, seed))
            held += 1
        except Refusal as refused:
            assert refused.status == 503 and refused.code == "busy"
            assert "you have" in refused.message
    assert held == MAX_UPLOADS_PER_MEMBER
    local = BlobStore(tmp_path / "alice")
    digest = local.put(_data(3 * CHUNK, 100))
    upload_blob(node.alice, digest, local)
    assert node.store.verify(digest)


def test_stale_partial_uploads_free_their_slots(node: _Node) -> None:
    for seed in range(MAX_UPLOADS_PER_MEMBER):
        _start_upload(node.mallory, _data(3 * CHUNK, seed))
    with pytest.raises(Refusal):
        _start_upload(node.mallory, _data(3 * CHUNK, 50))
    node.now += STALE_UPLOAD_S + 1
    _start_upload(node.mallory, _data(3 * CHUNK, 50))
    assert len(list((node.store.root / "tmp").glob("up-*.part"))) == 1


def test_junk_in_another_members_upload_of_the_same_blob_spoils_nothing(
    node: _Node, tmp_path: Path
) -> None:
    local = BlobStore(tmp_path / "alice")
    data = _data(3 * CHUNK, 7)
    digest = local.put(data)
    junk = bytes(CHUNK)
    node.mallory.put(f"/blobs/{digest}/chunks/0", params={"size": len(data)}, content=junk)
    upload_blob(node.alice, digest, local)
    assert node.store.verify(digest)


def test_upload_status_is_the_signers_own(node: _Node) -> None:
    data = _data(3 * CHUNK, 9)
    digest = hashlib.sha256(data).hexdigest()
    _start_upload(node.mallory, data)
    mine = node.mallory.get(f"/blobs/{digest}/upload", params={"size": len(data)}).json()
    theirs = node.alice.get(f"/blobs/{digest}/upload", params={"size": len(data)}).json()
    assert mine["received"] == CHUNK and theirs["received"] == 0
