"""Blob routes and chunked, resumable transfer: in-process first, then against a real uvicorn."""

from __future__ import annotations

import fcntl
import hashlib
import os
import resource
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import nacl.signing
import pytest

import bcfl_cli.client.blobs as client_blobs
from bcfl_cli.client.blobs import (
    FetchCancelled,
    SharedChunks,
    fetch_blob,
    fetch_manifest,
    upload_blob,
)
from bcfl_cli.client.transport import SignedClient
from bcfl_cli.demo.launcher import free_ports
from bcfl_cli.errors import BlobError
from bcfl_cli.node.blob_routes import blob_app
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.wire import httpsig
from bcfl_cli.wire.refusal import Refusal

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # starlette 1.x nudges towards httpx2 for its TestClient
    from starlette.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
CHUNK = 64 * 1024
MB = 1024 * 1024


class _Peer:
    """An in-process node serving blob routes (64 KiB chunks, 1 MiB blob limit)."""

    def __init__(self, root: Path) -> None:
        self.key = nacl.signing.SigningKey.generate()
        self.did = did_from_public_key(bytes(self.key.verify_key))
        self.store = BlobStore(root / "server")
        app = blob_app(
            self.store, is_member={self.did}.__contains__, max_blob_bytes=MB, chunk_size=CHUNK
        )
        self.http = TestClient(app, base_url="http://peer")
        self.client = SignedClient(self.key, "http://peer", transport=self.http._transport)  # type: ignore[arg-type]


@pytest.fixture
def peer(tmp_path: Path) -> Iterator[_Peer]:
    built = _Peer(tmp_path)
    with built.http, built.client:
        yield built


def _blob(store: BlobStore, size: int, seed: int = 1) -> str:
    data = hashlib.shake_256(seed.to_bytes(4, "big")).digest(size)
    return store.put(data)


def test_get_blob_range_and_manifest(peer: _Peer) -> None:
    digest = _blob(peer.store, 200_000)
    data = peer.store.get(digest)
    whole = peer.http.get(f"/blobs/{digest}")
    assert whole.status_code == 200 and whole.content == data
    part = peer.http.get(f"/blobs/{digest}", headers={"Range": "bytes=70000-"})
    assert part.status_code == 206 and part.content == data[70000:]
    assert part.headers["content-range"] == "bytes 70000-199999/200000"
    mid = peer.http.get(f"/blobs/{digest}", headers={"Range": "bytes=10-19"})
    assert mid.content == data[10:20]
    assert peer.http.get(f"/blobs/{digest}", headers={"Range": "bytes=200000-"}).status_code == 416
    manifest = peer.http.get(f"/blobs/{digest}/manifest").json()
    assert manifest["size"] == 200_000 and manifest["chunk_size"] == CHUNK
    assert manifest["chunks"][1] == hashlib.sha256(data[CHUNK : 2 * CHUNK]).hexdigest()
    assert len(manifest["chunks"]) == 4


@pytest.mark.parametrize(
    "name",
    [
        "..%2F..%2Fetc%2Fpasswd",
        "..%2F..%2Fetc",
        "%2e%2e",
        "ABCDEF" + "0" * 58,
        "0" * 63,
        "0" * 64 + "/../x",
        "g" * 64,
    ],
)
def test_path_traversal_and_bad_hashes_are_refused(peer: _Peer, name: str) -> None:
    for suffix in ("", "/manifest"):
        response = peer.http.get(f"/blobs/{name}{suffix}")
        assert response.status_code in (400, 404), response.text
        if response.status_code == 400:
            assert response.json()["error"] == "bad_hash"
    response = peer.client.request(
        "PUT", f"/blobs/{name}/chunks/0?size=1", content=b"x", allow=(400, 404)
    )
    assert response.status_code in (400, 404)
    assert not any(p.name == "passwd" for p in peer.store.root.rglob("*"))


def test_unknown_blob_is_404(peer: _Peer) -> None:
    response = peer.http.get(f"/blobs/{'0' * 64}")
    assert response.status_code == 404 and response.json()["error"] == "no_blob"


def test_upload_requires_member_signature(peer: _Peer) -> None:
    digest = "a" * 64
    assert peer.http.put(f"/blobs/{digest}/chunks/0?size=3", content=b"abc").status_code == 401
    stranger = SignedClient(
        nacl.signing.SigningKey.generate(),
        "http://peer",
        transport=peer.http._transport,  # type: ignore[arg-type]
    )
    with pytest.raises(Refusal) as info:
        stranger.put(f"/blobs/{digest}/chunks/0", params={"size": 3}, content=b"abc")
    assert info.value.status == 403
    assert list((peer.store.root / "tmp").iterdir()) == []


def test_upload_roundtrip_and_refusals(peer: _Peer, tmp_path: Path) -> None:
    local = BlobStore(tmp_path / "local")
    digest = _blob(local, 300_000)
    seen: list[int] = []
    upload_blob(peer.client, digest, local, progress=lambda done, total: seen.append(done))
    assert peer.store.verify(digest)
    assert seen[-1] == 300_000 and seen == sorted(seen)
    upload_blob(peer.client, digest, local)  # already there: a no-op

    other = _blob(local, 100_000, seed=2)
    data = local.get(other)
    # out of order
    with pytest.raises(Refusal) as info:
        peer.client.put(f"/blobs/{other}/chunks/1", params={"size": 100_000}, content=data[CHUNK:])
    assert info.value.status == 409 and info.value.code == "out_of_order"
    # wrong chunk length
    with pytest.raises(Refusal) as info:
        peer.client.put(f"/blobs/{other}/chunks/0", params={"size": 100_000}, content=data[:10])
    assert info.value.code == "bad_chunk"
    # over the blob limit
    with pytest.raises(Refusal) as info:
        peer.client.put(f"/blobs/{other}/chunks/0", params={"size": 2 * MB}, content=data[:CHUNK])
    assert info.value.status == 413
    # finalise before all chunks
    peer.client.put(f"/blobs/{other}/chunks/0", params={"size": 100_000}, content=data[:CHUNK])
    with pytest.raises(Refusal) as info:
        peer.client.put(f"/blobs/{other}", params={"size": 100_000}, content=b"")
    assert info.value.code == "incomplete"
    # bytes that do not hash to the name are not kept
    liar = "b" * 64
    for i in range(2):
        chunk = data[i * CHUNK : (i + 1) * CHUNK]
        peer.client.put(f"/blobs/{liar}/chunks/{i}", params={"size": 100_000}, content=chunk)
    with pytest.raises(Refusal) as info:
        peer.client.put(f"/blobs/{liar}", params={"size": 100_000}, content=b"")
    assert info.value.status == 422 and info.value.code == "hash_mismatch"
    assert not peer.store.has(liar)
    assert not list((peer.store.root / "tmp").glob(f"up-*-{liar}-*"))


def test_shared_chunks_read_and_digest_each_chunk_once_for_every_push(
    peer: _Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three pushes of one blob (a trainer's update to three peers) read and hash each chunk
    once (issue 19), and every peer's chunk still passes its signed Content-Digest."""
    local = BlobStore(tmp_path / "local")
    digest = _blob(local, 5 * CHUNK + 123)
    hashed: list[int] = []
    real = httpsig.content_digest

    def counting(body: bytes) -> str:
        hashed.append(len(body))
        return real(body)

    monkeypatch.setattr(httpsig, "content_digest", counting)
    monkeypatch.setattr(client_blobs, "content_digest", counting)
    peers = [_Peer(tmp_path / f"peer-{n}") for n in range(3)]
    offered: list[int] = []
    shared = SharedChunks(on_read=lambda offset, data: offered.append(offset))
    try:
        threads = [
            threading.Thread(
                target=upload_blob, args=(p.client, digest, local), kwargs={"shared": shared}
            )
            for p in peers
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert all(p.store.verify(digest) for p in peers)
        chunk_bodies = [n for n in hashed if n > 0]  # the finalise requests' empty bodies aside
        assert sorted(chunk_bodies) == sorted([CHUNK] * 5 + [123])  # once each, not 3 times
        assert offered == [i * CHUNK for i in range(6)]  # each read once, in order
    finally:
        for p in peers:
            p.client.close()
            p.http.close()


def test_shared_chunks_bound_what_they_keep_and_pass_on_a_failed_read() -> None:
    shared = SharedChunks(keep=2)
    reads: list[int] = []

    def reader(index: int) -> Callable[[], bytes]:
        def read() -> bytes:
            reads.append(index)
            return bytes([index]) * 10

        return read

    for index in range(4):
        data, digest = shared.chunk(10, index, reader(index))
        assert data == bytes([index]) * 10 and digest == httpsig.content_digest(data)
    assert shared.chunk(10, 3, reader(3))[0] == bytes([3]) * 10  # kept: not read again
    shared.chunk(10, 0, reader(0))  # dropped (only the last two are kept): read again
    assert reads == [0, 1, 2, 3, 0]

    def broken() -> bytes:
        raise OSError("disk gone")

    with pytest.raises(OSError):
        shared.chunk(10, 9, broken)
    assert shared.chunk(10, 9, reader(9))[0] == bytes([9]) * 10  # a failed read is not kept


def test_a_one_chunk_blob_is_stored_by_its_chunk(peer: _Peer, tmp_path: Path) -> None:
    data = b"one chunk" * 100
    digest = hashlib.sha256(data).hexdigest()
    answer = peer.client.put(f"/blobs/{digest}/chunks/0", params={"size": len(data)}, content=data)
    assert answer.json() == {"received": len(data), "complete": True}
    assert peer.store.verify(digest)
    assert not list((peer.store.root / "tmp").glob("up-*"))
    # a finalise after it (an older client's habit) is answered, not refused
    done = peer.client.put(f"/blobs/{digest}", params={"size": len(data)}, content=b"").json()
    assert done == {"hash": digest, "size": len(data)}
    # bytes that do not hash to the name are refused and not kept, nor a partial file
    liar = "c" * 64
    with pytest.raises(Refusal) as info:
        peer.client.put(f"/blobs/{liar}/chunks/0", params={"size": len(data)}, content=data)
    assert info.value.status == 422 and info.value.code == "hash_mismatch"
    assert not peer.store.has(liar)
    assert not list((peer.store.root / "tmp").glob(f"up-*-{liar}-*"))
    # upload_blob of a one-chunk blob ends with its chunk
    local = BlobStore(tmp_path / "local")
    small = local.put(b"x" * 1000)
    upload_blob(peer.client, small, local)
    assert peer.store.verify(small)


def test_upload_resumes_after_abort(peer: _Peer, tmp_path: Path) -> None:
    local = BlobStore(tmp_path / "local")
    digest = _blob(local, 500_000)

    class Abort(Exception):
        pass

    def abort_midway(done: int, total: int) -> None:
        if done >= 3 * CHUNK:
            raise Abort

    with pytest.raises(Abort):
        upload_blob(peer.client, digest, local, progress=abort_midway)
    # where the signer's own upload stands (uploads are per member, issue 16 item 9)
    status = peer.client.get(f"/blobs/{digest}/upload", params={"size": 500000}).json()
    assert status == {"received": 3 * CHUNK, "chunk_size": CHUNK, "complete": False}
    sent: list[int] = []
    upload_blob(peer.client, digest, local, progress=lambda d, t: sent.append(d))
    assert sent[0] == 4 * CHUNK  # resumed, not restarted
    assert peer.store.verify(digest)


def test_fetch_verifies_and_resumes_from_partial_file(peer: _Peer, tmp_path: Path) -> None:
    digest = _blob(peer.store, 400_000)
    data = peer.store.get(digest)
    local = BlobStore(tmp_path / "local")
    part = local.root / "tmp" / f"fetch-{digest}.part"
    # a previous run left 2.5 chunks, the second one corrupted: only chunk 0 is reused
    part.write_bytes(data[:CHUNK] + b"\xff" * CHUNK + data[2 * CHUNK : 2 * CHUNK + 1000])
    seen: list[int] = []
    fetch_blob(peer.client, digest, local, max_bytes=MB, progress=lambda d, t: seen.append(d))
    assert seen[0] == 2 * CHUNK
    assert local.get(digest) == data
    assert not part.exists()
    # over the caller's limit: refused before any byte is fetched
    other = BlobStore(tmp_path / "other")
    with pytest.raises(BlobError):
        fetch_blob(peer.client, digest, other, max_bytes=1000)
    with pytest.raises(Refusal):
        fetch_manifest(peer.client, "c" * 64, max_bytes=MB)


def test_fetch_refuses_a_peer_serving_corrupt_chunks(peer: _Peer, tmp_path: Path) -> None:
    digest = _blob(peer.store, 200_000)
    manifest = fetch_manifest(peer.client, digest, max_bytes=MB)  # cached by the peer now
    path = peer.store.path_for(digest)
    raw = bytearray(path.read_bytes())
    raw[CHUNK + 5] ^= 1
    path.write_bytes(bytes(raw))
    local = BlobStore(tmp_path / "local")
    with pytest.raises(BlobError, match="chunk 1"):
        fetch_blob(peer.client, digest, local, max_bytes=MB)
    assert not local.has(digest)
    part = local.root / "tmp" / f"fetch-{digest}.part"
    assert part.stat().st_size == CHUNK == manifest.chunk_size  # the good chunk is kept


class _Abandon(Exception):
    pass


@pytest.mark.parametrize("how", ["exception", "cancel"])
def test_an_abandoned_download_cannot_spoil_the_next_attempt(
    peer: _Peer, tmp_path: Path, how: str
) -> None:
    """Two attempts on one blob; the first stalls mid-way, is given up on, and goes on later.

    As when ``Syncer._ensure_one`` gives up on a slow peer and asks another: the first
    attempt's thread still runs. It used to share ``fetch-{hash}.part`` with the second, so
    when it woke up it wrote into, and cut back (``truncate``), the file the second had
    meanwhile renamed into the store: the stored blob ended corrupt.
    """
    digest = _blob(peer.store, 400_000)
    data = peer.store.get(digest)
    local = BlobStore(tmp_path / "local")
    stalled, wake, cancel = threading.Event(), threading.Event(), threading.Event()

    def slow(done: int, total: int) -> None:
        if done >= 2 * CHUNK and not wake.is_set():
            stalled.set()
            assert wake.wait(10)
            if how == "exception":
                raise _Abandon

    errors: list[BaseException] = []
    stop = {"cancel": cancel} if how == "cancel" else {}

    def first() -> None:
        try:
            fetch_blob(peer.client, digest, local, max_bytes=MB, progress=slow, **stop)
        except BaseException as exc:  # noqa: BLE001 - examined below
            errors.append(exc)

    thread = threading.Thread(target=first)
    thread.start()
    try:
        assert stalled.wait(10)
        files = list((local.root / "tmp").iterdir())
        assert len(files) == 1 and files[0].stat().st_size == 2 * CHUNK  # its own file
        fetch_blob(peer.client, digest, local, max_bytes=MB)  # the second attempt
        assert local.get(digest) == data
        cancel.set()  # what Syncer does when it gives up on the first
    finally:
        wake.set()
        thread.join(10)
    assert len(errors) == 1
    assert isinstance(errors[0], _Abandon if how == "exception" else FetchCancelled)
    assert local.get(digest) == data  # untouched by the first attempt's late writes
    assert list((local.root / "tmp").iterdir()) == []  # nothing left behind


def test_cancelled_download_parks_its_chunks_and_the_next_resumes(
    peer: _Peer, tmp_path: Path
) -> None:
    digest = _blob(peer.store, 400_000)
    local = BlobStore(tmp_path / "local")
    cancel = threading.Event()

    def cancel_at_3(done: int, total: int) -> None:
        if done >= 3 * CHUNK:
            cancel.set()

    with pytest.raises(FetchCancelled):
        fetch_blob(peer.client, digest, local, max_bytes=MB, progress=cancel_at_3, cancel=cancel)
    parked = local.root / "tmp" / f"fetch-{digest}.part"
    assert [p.name for p in (local.root / "tmp").iterdir()] == [parked.name]
    assert parked.stat().st_size == 3 * CHUNK
    seen: list[int] = []
    fetch_blob(peer.client, digest, local, max_bytes=MB, progress=lambda d, t: seen.append(d))
    assert seen[0] == 4 * CHUNK  # resumed, not restarted
    assert local.verify(digest) and list((local.root / "tmp").iterdir()) == []


def test_partial_file_of_a_dead_attempt_is_reused_but_not_a_running_ones(
    peer: _Peer, tmp_path: Path
) -> None:
    digest = _blob(peer.store, 400_000)
    data = peer.store.get(digest)
    local = BlobStore(tmp_path / "local")
    tmp = local.root / "tmp"
    running = tmp / f"fetch-{digest}.0000000000000001.part"
    running.write_bytes(data[: 3 * CHUNK])
    with open(running, "rb") as held:
        fcntl.flock(held.fileno(), fcntl.LOCK_EX)  # its attempt is alive: hands off
        seen: list[int] = []
        fetch_blob(peer.client, digest, local, max_bytes=MB, progress=lambda d, t: seen.append(d))
        assert seen[0] == CHUNK  # started afresh
        assert running.read_bytes() == data[: 3 * CHUNK]
    assert local.verify(digest)
    # a process killed mid-download left its file unlocked: the next attempt takes it over
    other = _blob(peer.store, 300_000, seed=3)
    dead = tmp / f"fetch-{other}.0000000000000002.part"
    dead.write_bytes(peer.store.get(other)[: 2 * CHUNK])
    seen = []
    fetch_blob(peer.client, other, local, max_bytes=MB, progress=lambda d, t: seen.append(d))
    assert seen[0] == 3 * CHUNK and local.verify(other)
    assert not dead.exists()


# --- whole first: a node's download in one request --------------------------------------------
class _Recorder(httpx.BaseTransport):
    """The peer's transport, recording each request (path, Range); if told, it re-streams a
    whole-blob answer in ``piece``-byte pieces, and cuts the first one after ``cut`` bytes (a
    dropped connection)."""

    def __init__(
        self, inner: httpx.BaseTransport, cut: int | None = None, piece: int | None = None
    ) -> None:
        self.inner = inner
        self.cut = cut
        self.piece = piece
        self.seen: list[tuple[str, str | None]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        wanted = request.headers.get("range")
        self.seen.append((request.url.path, wanted))
        response = self.inner.handle_request(request)
        if wanted is not None or request.url.path.endswith("manifest"):
            return response
        if self.cut is None and self.piece is None:
            return response
        body, cut, piece = response.read(), self.cut, self.piece or len(response.content)
        self.cut = None

        class _Pieces(httpx.SyncByteStream):
            def __iter__(self) -> Iterator[bytes]:
                for start in range(0, len(body) if cut is None else cut, piece):
                    yield body[start : min(start + piece, len(body) if cut is None else cut)]
                if cut is not None:
                    raise httpx.ReadError("connection dropped")

        return httpx.Response(response.status_code, headers=response.headers, stream=_Pieces())


def _recording_client(
    peer: _Peer, cut: int | None = None, piece: int | None = None
) -> tuple[SignedClient, _Recorder]:
    recorder = _Recorder(peer.http._transport, cut, piece)  # type: ignore[arg-type]
    return SignedClient(peer.key, "http://peer", transport=recorder), recorder


def test_whole_first_fetches_a_blob_in_one_request_and_hashes_it_once(
    peer: _Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    digest = _blob(peer.store, 400_000)
    local = BlobStore(tmp_path / "local")
    client, recorder = _recording_client(peer, piece=CHUNK // 2)
    handed: list[str | None] = []
    adopt = local.adopt

    def spy(part: Path, **kw: Any) -> str:
        handed.append(kw.get("known_digest"))
        return adopt(part, **kw)

    monkeypatch.setattr(local, "adopt", spy)
    with client:
        seen: list[int] = []
        fetch_blob(
            client,
            digest,
            local,
            max_bytes=MB,
            whole_first=True,
            progress=lambda d, t: seen.append(d),
        )
    assert recorder.seen == [(f"/blobs/{digest}", None)]  # no manifest, no range
    assert handed == [digest]  # the digest taken while streaming: the file is not read again
    assert local.get(digest) == peer.store.get(digest)
    assert seen[0] == CHUNK // 2 and seen[-1] == 400_000
    assert list((local.root / "tmp").iterdir()) == []


def test_whole_first_starts_the_write_out_as_the_bytes_arrive(
    peer: _Peer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every ``WRITEBACK_BYTES`` written, the kernel is asked to start writing them out
    (ranges that follow each other from byte 0), so the fsync at adoption finds little left;
    the blob is the same."""
    monkeypatch.setattr(client_blobs, "WRITEBACK_BYTES", 100_000)
    asked: list[tuple[int, int]] = []
    monkeypatch.setattr(client_blobs, "start_writeback", lambda fd, at, n: asked.append((at, n)))
    digest = _blob(peer.store, 450_000)
    local = BlobStore(tmp_path / "local")
    client, _ = _recording_client(peer, piece=CHUNK // 2)
    with client:
        fetch_blob(client, digest, local, max_bytes=MB, whole_first=True)
    assert local.get(digest) == peer.store.get(digest)
    assert asked and asked[0][0] == 0 and all(n >= 100_000 for _, n in asked)
    assert all(a + n == b for (a, n), (b, _) in zip(asked, asked[1:], strict=False))
    assert asked[-1][0] + asked[-1][1] <= 450_000


def test_early_write_out_is_a_harmless_hint(tmp_path: Path) -> None:
    """On a platform without it, nothing happens; with it, the file is unchanged."""
    from bcfl_cli.store import writeback

    path = tmp_path / "f"
    path.write_bytes(b"x" * 300_000)
    with open(path, "r+b") as f:
        writeback.start_writeback(f.fileno(), 0, 300_000)
        writeback.start_writeback(f.fileno(), 0, 0)
    assert path.read_bytes() == b"x" * 300_000
    assert writeback.available() == sys.platform.startswith("linux")


def test_whole_first_refuses_a_blob_over_the_limit_before_reading_it(
    peer: _Peer, tmp_path: Path
) -> None:
    digest = _blob(peer.store, 400_000)
    local = BlobStore(tmp_path / "local")
    with peer.client:
        seen: list[int] = []
        with pytest.raises(BlobError, match="over the limit"):
            fetch_blob(
                peer.client,
                digest,
                local,
                max_bytes=1000,
                whole_first=True,
                progress=lambda d, t: seen.append(d),
            )
    assert seen == [] and not local.has(digest)
    assert list((local.root / "tmp").iterdir()) == []


def test_whole_first_keeps_nothing_from_a_peer_serving_corrupt_bytes(
    peer: _Peer, tmp_path: Path
) -> None:
    digest = _blob(peer.store, 200_000)
    path = peer.store.path_for(digest)
    raw = bytearray(path.read_bytes())
    raw[CHUNK + 5] ^= 1
    path.write_bytes(bytes(raw))
    local = BlobStore(tmp_path / "local")
    with pytest.raises(BlobError, match="corrupt"):
        fetch_blob(peer.client, digest, local, max_bytes=MB, whole_first=True)
    assert not local.has(digest)
    assert list((local.root / "tmp").iterdir()) == []


def test_whole_first_resumes_a_dropped_stream_after_checking_what_arrived(
    peer: _Peer, tmp_path: Path
) -> None:
    """The bytes of a broken whole-blob stream were never checked: they are resumed from only
    once the manifest has checked them, whole chunk by whole chunk."""
    digest = _blob(peer.store, 400_000)
    local = BlobStore(tmp_path / "local")
    client, recorder = _recording_client(peer, cut=2 * CHUNK + 1000)
    with client:
        fetch_blob(client, digest, local, max_bytes=MB, whole_first=True)
    assert recorder.seen == [
        (f"/blobs/{digest}", None),
        (f"/blobs/{digest}/manifest", None),
        (f"/blobs/{digest}", f"bytes={2 * CHUNK}-"),  # two whole checked chunks kept
    ]
    assert local.get(digest) == peer.store.get(digest)
    assert list((local.root / "tmp").iterdir()) == []


def test_whole_first_unchecked_bytes_parked_by_a_cancel_are_checked_on_resume(
    peer: _Peer, tmp_path: Path
) -> None:
    digest = _blob(peer.store, 400_000)
    data = peer.store.get(digest)
    local = BlobStore(tmp_path / "local")
    cancel = threading.Event()

    def cancel_midway(done: int, total: int) -> None:
        if done >= 3 * CHUNK:
            cancel.set()

    first, _ = _recording_client(peer, piece=CHUNK // 2)
    with first, pytest.raises(FetchCancelled):
        fetch_blob(
            first,
            digest,
            local,
            max_bytes=MB,
            progress=cancel_midway,
            cancel=cancel,
            whole_first=True,
        )
    parked = local.root / "tmp" / f"fetch-{digest}.part"
    assert parked.stat().st_size >= 3 * CHUNK
    spoilt = bytearray(parked.read_bytes())
    spoilt[CHUNK + 7] ^= 1  # the second chunk no longer matches the manifest
    parked.write_bytes(bytes(spoilt))
    client, recorder = _recording_client(peer)
    with client:
        fetch_blob(client, digest, local, max_bytes=MB, whole_first=True)
    assert recorder.seen[-1] == (f"/blobs/{digest}", f"bytes={CHUNK}-")  # from the first good
    assert local.get(digest) == data
    assert list((local.root / "tmp").iterdir()) == []


# --- real process --------------------------------------------------------------------------


def _vm(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def _write_random_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(MB, left)
            f.write(os.urandom(n))
            left -= n


def _transfer(tmp_path: Path, size: int) -> dict[str, float]:
    key = nacl.signing.SigningKey.generate()
    did = did_from_public_key(bytes(key.verify_key))
    port = free_ports(1)[0]  # outside the ephemeral range: no race with outgoing sockets
    server_dir = tmp_path / "server"
    server_dir.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "tests/node/_blob_server.py"),
            str(server_dir),
            str(port),
            did,
            str(size * 2),
            str(size * 2 // 5),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"{base}/blobs/{'0' * 64}/manifest").status_code == 404:
                    break
            except httpx.TransportError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.05)
        server_base_rss = _vm(proc.pid, "VmRSS")
        source = tmp_path / "model.bin"
        _write_random_file(source, size)
        local = BlobStore(tmp_path / "local")
        digest = local.put_file(source)
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

        with SignedClient(key, base, timeout=30) as client:

            class Abort(Exception):
                pass

            def abort(done: int, total: int) -> None:
                if done >= total // 3:
                    raise Abort

            t0 = time.perf_counter()
            with pytest.raises(Abort):
                upload_blob(client, digest, local, progress=abort)
            upload_blob(client, digest, local)
            t_up = time.perf_counter() - t0

            fetched = BlobStore(tmp_path / "fetched")
            t0 = time.perf_counter()
            fetch_blob(client, digest, fetched, max_bytes=size * 2)
            t_down = time.perf_counter() - t0

        assert (server_dir / "dropped").exists(), "the server never dropped the connection"
        assert fetched.verify(digest) and fetched.size(digest) == size
        rss_growth = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
        server_growth = _vm(proc.pid, "VmHWM") - server_base_rss
        # streamed: neither side ever held the blob (or a large part of it) in memory
        assert rss_growth < max(size // 3, 24 * MB), rss_growth
        assert server_growth < max(size // 3, 24 * MB), server_growth
        return {
            "upload_MBps": size / MB / t_up,
            "download_MBps": size / MB / t_down,
            "client_rss_growth_MB": rss_growth / MB,
            "server_rss_growth_MB": server_growth / MB,
        }
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.network
def test_real_process_transfer_20mb(tmp_path: Path) -> None:
    figures = _transfer(tmp_path, 20 * MB)
    print("20 MB transfer:", figures)


@pytest.mark.network
def test_real_process_transfer_64mb_within_a_third_of_its_size(tmp_path: Path) -> None:
    """Issue 19's bound: a 64 MB update (a 16M-parameter model) moves both ways, resumed after
    a dropped connection, while neither process grows by a third of it (buffering the blob
    whole, on either side, would grow it by at least the blob's size)."""
    figures = _transfer(tmp_path, 64 * MB)
    print("64 MB transfer:", figures)
    assert figures["server_rss_growth_MB"] < 64 / 3
    assert figures["client_rss_growth_MB"] < 64 / 3


@pytest.mark.network
@pytest.mark.slow
def test_real_process_transfer_100mb(tmp_path: Path) -> None:
    figures = _transfer(tmp_path, 100 * MB)
    print("100 MB transfer:", figures)


class _Sink:
    """A ``StreamSink`` that records what it was fed and whether (with what) it finished."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.fed = bytearray()
        self.finished: list[str] = []

    def feed(self, data: bytes) -> None:
        self.fed += data

    def finish(self, digest: str) -> None:
        self.finished.append(digest)


def test_whole_first_feeds_a_sink_the_bytes_and_finishes_it_once_adopted(
    peer: _Peer, tmp_path: Path
) -> None:
    digest = _blob(peer.store, 300_000)
    local = BlobStore(tmp_path / "local")
    client, _ = _recording_client(peer, piece=CHUNK // 3)
    sinks: list[_Sink] = []

    def sink(size: int) -> _Sink:
        sinks.append(_Sink(size))
        return sinks[-1]

    with client:
        fetch_blob(client, digest, local, max_bytes=MB, whole_first=True, sink=sink)
    assert [s.size for s in sinks] == [300_000]
    assert bytes(sinks[0].fed) == local.get(digest) and sinks[0].finished == [digest]


def test_a_sink_is_never_finished_on_corrupt_or_resumed_bytes(peer: _Peer, tmp_path: Path) -> None:
    """Bytes that do not hash to the name finish no sink; a resumed download feeds none."""
    digest = _blob(peer.store, 200_000)
    path = peer.store.path_for(digest)
    good = path.read_bytes()
    raw = bytearray(good)
    raw[CHUNK + 5] ^= 1
    path.write_bytes(bytes(raw))
    sinks: list[_Sink] = []

    def sink(size: int) -> _Sink:
        sinks.append(_Sink(size))
        return sinks[-1]

    local = BlobStore(tmp_path / "local")
    with pytest.raises(BlobError, match="corrupt"):
        fetch_blob(peer.client, digest, local, max_bytes=MB, whole_first=True, sink=sink)
    assert sinks and all(s.finished == [] for s in sinks)
    path.write_bytes(good)
    sinks.clear()
    client, _ = _recording_client(peer, cut=2 * CHUNK + 1000)
    with client:
        fetch_blob(client, digest, local, max_bytes=MB, whole_first=True, sink=sink)
    assert local.get(digest) == good
    assert len(sinks) == 1 and sinks[0].finished == []  # the broken stream's sink only
