"""Blobs are streamed to disk as they arrive, the cap holds before any byte is stored, and a
finished upload is renamed into the store, never copied nor held whole (issue 19).

The real-process transfer with a memory bound on both sides is
tests/client/test_blob_transfer.py::test_real_process_transfer_20mb (and ``_100mb``, slow).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import nacl.signing
import pytest
from starlette.applications import Starlette

from bcfl_cli.client.blobs import upload_blob
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.errors import BlobError
from bcfl_cli.node.auth import SignatureAuth
from bcfl_cli.node.blob_keeper import (
    MIN_QUOTA_BYTES,
    QUOTA_BLOBS,
    QUOTA_SLACK_BYTES,
    default_quota,
)
from bcfl_cli.node.blob_routes import BlobRoutes
from bcfl_cli.node.limits import NodeLimits
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.spec import DEFAULT_MAX_BLOB_BYTES, ContractRules
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.wire.refusal import Refusal

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

CHUNK = 64 * 1024
CAP = 8 * CHUNK
MiB = 1024 * 1024


def _data(size: int, seed: int = 0) -> bytes:
    return hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)


class _Node:
    def __init__(self, root: Path) -> None:
        key = nacl.signing.SigningKey.generate()
        self.store = BlobStore(root / "server")
        routes = BlobRoutes(self.store, max_blob_bytes=CAP, chunk_size=CHUNK)
        self.routes = routes
        app = SignatureAuth(
            Starlette(routes=routes.routes),
            is_member={did_from_public_key(bytes(key.verify_key))}.__contains__,
            limits=NodeLimits(max_body_bytes=CHUNK + 64 * 1024),
        )
        self.http = TestClient(app, base_url="http://peer")
        self.client = SignedClient(key, "http://peer", transport=self.http._transport, retries=0)  # type: ignore[arg-type]

    def files(self) -> list[Path]:
        """Every file under the node's blob store: blobs and partial files alike."""
        return sorted(p for p in self.store.root.rglob("*") if p.is_file())


@pytest.fixture
def node(tmp_path: Path) -> Iterator[_Node]:
    built = _Node(tmp_path)
    with built.http, built.client:
        yield built


def test_the_default_cap_takes_a_110m_parameter_float32_update() -> None:
    assert 110_000_000 * 4 + MiB <= DEFAULT_MAX_BLOB_BYTES
    assert ContractRules().max_blob_bytes == DEFAULT_MAX_BLOB_BYTES


def test_a_size_over_the_cap_is_refused_before_any_byte_is_stored(node: _Node) -> None:
    data = _data(CAP + 1)
    digest = hashlib.sha256(data).hexdigest()
    for index in (0, 8):
        with pytest.raises(Refusal) as refused:
            node.client.put(
                f"/blobs/{digest}/chunks/{index}",
                params={"size": len(data)},
                content=data[index * CHUNK : (index + 1) * CHUNK],
            )
        assert (refused.value.status, refused.value.code) == (413, "blob_too_large")
    with pytest.raises(Refusal) as refused:
        node.client.put(f"/blobs/{digest}", params={"size": len(data)}, content=b"")
    assert refused.value.status == 413
    assert node.files() == []


def test_a_stream_past_the_cap_is_cut_off_and_leaves_no_file(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "b")
    pulled = []

    def chunks() -> Iterator[bytes]:
        for i in range(100):
            pulled.append(i)
            yield _data(CHUNK, i)

    with pytest.raises(BlobError, match="limit"):
        store.put_stream(chunks(), max_bytes=CAP)
    assert len(pulled) == CAP // CHUNK + 1  # stopped at the first chunk past the cap
    assert [p for p in store.root.rglob("*") if p.is_file()] == []


def test_chunks_are_written_as_they_arrive_and_the_blob_is_renamed_not_copied(
    node: _Node, tmp_path: Path
) -> None:
    data = _data(5 * CHUNK + 123)
    local = BlobStore(tmp_path / "local")
    digest = local.put(data)
    on_disk: list[int] = []
    inodes: set[int] = set()

    def watch(received: int, total: int) -> None:
        parts = list((node.store.root / "tmp").glob("up-*.part"))
        if received < total:
            assert len(parts) == 1
            on_disk.append(parts[0].stat().st_size)
            inodes.add(parts[0].stat().st_ino)

    upload_blob(node.client, digest, local, progress=watch)
    # every acknowledged chunk was on disk when acknowledged: nothing waits in memory
    assert on_disk == [CHUNK * i for i in range(1, 6)]
    assert node.store.verify(digest)
    # finalise renamed the partial file into the store: the same inode, written once
    assert inodes == {node.store.path_for(digest).stat().st_ino}
    assert list((node.store.root / "tmp").iterdir()) == []


def test_adopt_keeps_only_a_file_that_hashes_to_its_name(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "b")
    data = _data(3 * CHUNK)
    digest = hashlib.sha256(data).hexdigest()
    wrong = store.root / "tmp" / "in-wrong"
    wrong.write_bytes(data[:-1] + b"x")
    with pytest.raises(BlobError, match="mismatch"):
        store.adopt(wrong, expected=digest)
    assert not wrong.exists() and not store.has(digest)
    big = store.root / "tmp" / "in-big"
    big.write_bytes(data)
    with pytest.raises(BlobError, match="limit"):
        store.adopt(big, expected=digest, max_bytes=len(data) - 1)
    assert not big.exists() and not store.has(digest)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(data)
    with pytest.raises(BlobError, match="partial file"):
        store.adopt(elsewhere, expected=digest)
    good = store.root / "tmp" / "in-good"
    good.write_bytes(data)
    inode = os.stat(good).st_ino
    assert store.adopt(good, expected=digest) == digest
    assert store.verify(digest) and store.path_for(digest).stat().st_ino == inode


def test_the_quota_follows_the_model_not_the_cap() -> None:
    model = 440 * MiB
    assert default_quota(DEFAULT_MAX_BLOB_BYTES, model) == QUOTA_BLOBS * (model + QUOTA_SLACK_BYTES)
    # a small model: the floor, not 4 GiB
    assert default_quota(DEFAULT_MAX_BLOB_BYTES, 40_000) == MIN_QUOTA_BYTES
    # never more than the cap allows, and the cap alone when the model's size is unknown
    assert default_quota(CAP * 1024, CAP * 4096) == QUOTA_BLOBS * CAP * 1024
    assert default_quota(DEFAULT_MAX_BLOB_BYTES) == QUOTA_BLOBS * DEFAULT_MAX_BLOB_BYTES


def test_adopt_with_a_known_digest_does_not_read_the_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(tmp_path / "b")
    data = _data(3 * CHUNK)
    digest = hashlib.sha256(data).hexdigest()

    def no_second_read(*_args: object) -> str:
        raise AssertionError("a file whose hash is known was hashed again")

    monkeypatch.setattr("bcfl_cli.store.blobs._hash_file", no_second_read)
    # a known hash that is not the expected one: refused, the file dropped, nothing stored
    wrong = store.root / "tmp" / "in-wrong"
    wrong.write_bytes(data)
    with pytest.raises(BlobError, match="mismatch"):
        store.adopt(wrong, expected=digest, known_digest="0" * 64)
    assert not wrong.exists() and not store.has(digest)
    # the size cap still holds without a read
    big = store.root / "tmp" / "in-big"
    big.write_bytes(data)
    with pytest.raises(BlobError, match="limit"):
        store.adopt(big, expected=digest, max_bytes=len(data) - 1, known_digest=digest)
    assert not big.exists() and not store.has(digest)
    good = store.root / "tmp" / "in-good"
    good.write_bytes(data)
    assert store.adopt(good, expected=digest, known_digest=digest) == digest
    monkeypatch.undo()
    assert store.verify(digest)


def _uploaded_with(node: _Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """Upload a 5.x-chunk blob to ``node``; the ``known_digest`` its finalise passed to adopt."""
    seen: list[object] = []
    adopt = BlobStore.adopt

    def spy(self: BlobStore, part: Path, **kwargs: object) -> str:
        seen.append(kwargs.get("known_digest"))
        return adopt(self, part, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BlobStore, "adopt", spy)
    local = BlobStore(tmp_path / "local")
    digest = local.put(_data(5 * CHUNK + 7, seed=3))
    upload_blob(node.client, digest, local)
    assert node.store.verify(digest)
    seen.append(digest)
    return seen


def test_an_upload_is_hashed_once_as_its_chunks_are_appended(
    node: _Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    known, digest = _uploaded_with(node, tmp_path, monkeypatch)
    assert known == digest  # the running hash: finalise read nothing again


def test_a_partial_upload_this_process_did_not_append_whole_is_hashed_again(
    node: _Node, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A node that restarted mid-upload (no running hash) or whose running hash fell behind
    the file hashes the whole partial file at finalise, as before: a partial file that does
    not hash to its name is still refused."""
    data = _data(3 * CHUNK, seed=4)
    digest = hashlib.sha256(data).hexdigest()
    node.client.put(f"/blobs/{digest}/chunks/0", params={"size": len(data)}, content=data[:CHUNK])
    # the process "restarts": its routes forget every running hash, the partial file stays
    node.routes._running.clear()
    for index in (1, 2):
        piece = data[index * CHUNK : (index + 1) * CHUNK]
        node.client.put(
            f"/blobs/{digest}/chunks/{index}", params={"size": len(data)}, content=piece
        )
    seen: list[object] = []
    adopt = BlobStore.adopt

    def spy(self: BlobStore, part: Path, **kwargs: object) -> str:
        seen.append(kwargs.get("known_digest"))
        return adopt(self, part, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(BlobStore, "adopt", spy)
    node.client.put(f"/blobs/{digest}", params={"size": len(data)}, content=b"")
    assert seen == [None] and node.store.verify(digest)
    # a partial file changed behind the routes' back (same size, other bytes) is refused
    other = _data(3 * CHUNK, seed=5)
    other_digest = hashlib.sha256(other).hexdigest()
    for index in range(3):
        piece = other[index * CHUNK : (index + 1) * CHUNK]
        node.client.put(
            f"/blobs/{other_digest}/chunks/{index}", params={"size": len(other)}, content=piece
        )
    node.routes._running.clear()
    (part,) = (node.store.root / "tmp").glob("up-*.part")
    part.write_bytes(other[:-1] + b"\0")
    with pytest.raises(Refusal) as refused:
        node.client.put(f"/blobs/{other_digest}", params={"size": len(other)}, content=b"")
    assert refused.value.code == "hash_mismatch" and not node.store.has(other_digest)
