"""Fetching and uploading blobs in chunks: resumable, checked chunk by chunk, never whole in memory.

Download: read the peer's manifest (size, chunk size, per-chunk SHA-256), then stream
``GET /blobs/{hash}`` with a ``Range`` from the first missing byte into
``blob_dir/tmp/fetch-{hash}.part`` (a name made from the validated hash only), checking every
chunk against the manifest as it completes. After a dropped connection the next attempt starts
from the last whole, checked chunk; a partial file left by an earlier run is re-checked chunk by
chunk and reused. At the end the whole file is hashed again before it is renamed into the store,
so a lying manifest can never put a wrong blob there.

Upload: ask where the peer stands (``GET /blobs/{hash}/upload``), send the missing chunks with
signed ``PUT /blobs/{hash}/chunks/{i}``, then finalise with ``PUT /blobs/{hash}``.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bcfl_cli.errors import BlobError, NodeError
from bcfl_cli.node.client import PeerRefused, SignedClient
from bcfl_cli.protocol.encoding import is_hash_hex
from bcfl_cli.store.blobs import BlobStore

Progress = Callable[[int, int], None]

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 64 * 1024 * 1024
READ_SIZE = 1024 * 1024
MAX_ATTEMPTS = 5


class BlobManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    hash: str
    size: int = Field(ge=0)
    chunk_size: int = Field(ge=MIN_CHUNK, le=MAX_CHUNK)
    chunks: list[str]

    def chunk_len(self, index: int) -> int:
        return min(self.chunk_size, self.size - index * self.chunk_size)


def _check_hash(digest: str) -> None:
    if not is_hash_hex(digest):
        raise BlobError(f"not a blob hash: {digest[:80]!r}")


def fetch_manifest(client: SignedClient, digest: str, *, max_bytes: int) -> BlobManifest:
    _check_hash(digest)
    response = client.get(f"/blobs/{digest}/manifest")
    try:
        manifest = BlobManifest.model_validate_json(response.content)
    except ValidationError as exc:
        raise NodeError(f"peer sent a malformed manifest for {digest}: {exc.errors()[:1]}") from exc
    if manifest.hash != digest:
        raise NodeError(f"peer sent the manifest of {manifest.hash} when asked for {digest}")
    if manifest.size > max_bytes:
        raise BlobError(f"blob {digest} has {manifest.size} bytes, over the limit of {max_bytes}")
    expected_chunks = -(-manifest.size // manifest.chunk_size)
    if len(manifest.chunks) != expected_chunks or not all(map(is_hash_hex, manifest.chunks)):
        raise NodeError(f"peer sent an inconsistent manifest for {digest}")
    return manifest


def _resume_point(part: Path, manifest: BlobManifest) -> int:
    """Bytes of ``part`` that are whole chunks matching the manifest; the rest is cut off."""
    if not part.exists():
        part.touch()
        return 0
    good = 0
    with open(part, "r+b") as f:
        for index in range(len(manifest.chunks)):
            want = manifest.chunk_len(index)
            hasher = hashlib.sha256()
            got = 0
            while got < want:
                piece = f.read(min(READ_SIZE, want - got))
                if not piece:
                    break
                hasher.update(piece)
                got += len(piece)
            if got < want or hasher.hexdigest() != manifest.chunks[index]:
                break
            good += want
        f.truncate(good)
    return good


def fetch_blob(
    client: SignedClient,
    digest: str,
    store: BlobStore,
    *,
    max_bytes: int,
    progress: Progress | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> str:
    """Download blob ``digest`` from the peer behind ``client`` into ``store``; resumable."""
    _check_hash(digest)
    if store.has(digest) and store.verify(digest):
        return digest
    manifest = fetch_manifest(client, digest, max_bytes=max_bytes)
    part = store.root / "tmp" / f"fetch-{digest}.part"
    done = _resume_point(part, manifest)
    failures = 0
    while done < manifest.size:
        before = done
        try:
            done = _download_from(client, manifest, part, done, progress)
        except (httpx.TransportError, NodeError) as exc:
            if isinstance(exc, PeerRefused) and exc.status < 500:
                raise
            done = part.stat().st_size  # cut back to the last whole, checked chunk
            failures = 0 if done > before else failures + 1
            if failures >= max_attempts:
                raise NodeError(
                    f"download of {digest} stalled at {done}/{manifest.size} bytes: {exc}",
                    hint="the partial file is kept; run the same command again to resume",
                ) from exc
            time.sleep(min(0.1 * 2**failures, 2.0))
    _adopt(store, part, digest)
    return digest


def _adopt(store: BlobStore, part: Path, digest: str) -> None:
    """Move a complete, fsynced partial file into the store once its whole hash is checked.

    Same end as ``BlobStore.put_stream`` (a rename within the store's file system) without
    copying the file again.
    """
    hasher = hashlib.sha256()
    with open(part, "rb") as f:
        for piece in iter(lambda: f.read(READ_SIZE), b""):
            hasher.update(piece)
    if hasher.hexdigest() != digest:
        part.unlink(missing_ok=True)
        raise BlobError(f"downloaded blob hashes to {hasher.hexdigest()}, expected {digest}")
    final = store.path_for(digest)
    final.parent.mkdir(exist_ok=True)
    os.replace(part, final)


def _download_from(
    client: SignedClient,
    manifest: BlobManifest,
    part: Path,
    done: int,
    progress: Progress | None,
) -> int:
    """Stream from byte ``done`` (a chunk boundary); returns the bytes of whole checked chunks.

    Whatever happens, the partial file is cut back to whole checked chunks, so after an
    exception its size is where the next attempt starts.
    """
    index = done // manifest.chunk_size
    headers = {"Range": f"bytes={done}-"}
    with client.stream("GET", f"/blobs/{manifest.hash}", headers=headers) as response:
        content_range = response.headers.get("content-range", "")
        if response.status_code != 206 or not content_range.startswith(f"bytes {done}-"):
            raise NodeError(f"peer ignored the range request for {manifest.hash}")
        with open(part, "r+b") as out:
            out.seek(done)
            out.truncate()
            try:
                hasher = hashlib.sha256()
                in_chunk = 0
                for piece in response.iter_raw(READ_SIZE):
                    view = memoryview(piece)
                    while view:
                        if index >= len(manifest.chunks):
                            raise NodeError(f"peer sent more than {manifest.size} bytes")
                        take = min(len(view), manifest.chunk_len(index) - in_chunk)
                        hasher.update(view[:take])
                        out.write(view[:take])
                        in_chunk += take
                        view = view[take:]
                        if in_chunk == manifest.chunk_len(index):
                            if hasher.hexdigest() != manifest.chunks[index]:
                                raise BlobError(
                                    f"chunk {index} of {manifest.hash} does not match the "
                                    "manifest: the peer serves corrupt data"
                                )
                            done += in_chunk
                            index += 1
                            hasher = hashlib.sha256()
                            in_chunk = 0
                            if progress is not None:
                                progress(done, manifest.size)
            finally:
                out.truncate(done)
                out.flush()
                os.fsync(out.fileno())
    if done != manifest.size:
        raise NodeError(f"peer closed the stream at {done}/{manifest.size} bytes")
    return done


def upload_blob(
    client: SignedClient,
    digest: str,
    store: BlobStore,
    *,
    progress: Progress | None = None,
    max_attempts: int = MAX_ATTEMPTS,
) -> None:
    """Upload a stored blob to the peer behind ``client``, resuming where the peer stands."""
    _check_hash(digest)
    size = store.size(digest)
    failures = 0
    with store.open(digest) as f:
        while True:
            status = client.get(f"/blobs/{digest}/upload", params={"size": size}).json()
            if status.get("complete") is True:
                break
            chunk_size = int(status["chunk_size"])
            received = int(status["received"])
            if not MIN_CHUNK <= chunk_size <= MAX_CHUNK or not 0 <= received <= size:
                raise NodeError(f"peer sent an inconsistent upload status: {status}")
            before = received
            try:
                while received < size:
                    index = received // chunk_size
                    f.seek(index * chunk_size)
                    data = f.read(min(chunk_size, size - index * chunk_size))
                    answer = client.put(
                        f"/blobs/{digest}/chunks/{index}", params={"size": size}, content=data
                    ).json()
                    received = int(answer["received"])
                    if progress is not None:
                        progress(received, size)
                    if answer.get("complete") is True:
                        break
                client.put(f"/blobs/{digest}", params={"size": size}, content=b"")
                break
            except NodeError as exc:
                if isinstance(exc, PeerRefused) and exc.code not in {"out_of_order", "incomplete"}:
                    raise
                failures = 0 if received > before else failures + 1
                if failures >= max_attempts:
                    raise NodeError(
                        f"upload of {digest} stalled at {received}/{size} bytes: {exc}",
                        hint="run the same command again to resume",
                    ) from exc
