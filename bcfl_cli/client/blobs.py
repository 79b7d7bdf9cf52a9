"""Fetching and uploading blobs in chunks: resumable, checked chunk by chunk, never whole in memory.

Download: read the peer's manifest (size, chunk size, per-chunk SHA-256), then stream
``GET /blobs/{hash}`` with a ``Range`` from the first missing byte into a partial file of this
attempt's own, checking every chunk against the manifest as it completes. After a dropped
connection the next request starts from the last whole, checked chunk. At the end the whole file
is hashed again before it is renamed into the store, so a lying manifest can never put a wrong
blob there. A node catching up asks for the whole blob first (``whole_first``): one request,
the content address hashed as the bytes stream (the cap checked against ``Content-Length``
before a byte is read), the file renamed under that digest; only a broken stream falls back to
the manifest, whose chunk hashes then check what arrived before it is resumed from.

Concurrent and abandoned attempts never share a file. Each attempt writes
``blob_dir/tmp/fetch-{hash}.{random}.part`` (names made from the validated hash only) and holds
an exclusive ``flock`` on it for as long as it runs; only the holder of that lock may write,
rename or remove the file. An attempt that stops without the blob (dropped for good, cancelled,
interrupted) *parks* its checked chunks as ``fetch-{hash}.part``; the next attempt *claims* that
file (lock, check it is still the parked one, rename it to its own name), re-checks it chunk by
chunk and resumes from it. The partial file of a process that died is claimed the same way
(nobody holds its lock any more). So a download that a caller gave up on (``cancel``) but whose
thread still runs can neither corrupt nor truncate another attempt's file, nor the stored blob.

Upload: ask where the peer stands (``GET /blobs/{hash}/upload``), send the missing chunks with
signed ``PUT /blobs/{hash}/chunks/{i}``, then finalise with ``PUT /blobs/{hash}``. A blob pushed
to several peers at once (a trainer's update) shares one ``SharedChunks``: each chunk is read
and its ``Content-Digest`` computed once for all of them, not once a peer.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import secrets
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import httpx
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bcfl_cli.client.transport import SignedClient
from bcfl_cli.errors import BcflError, BlobError, EncodingError, NodeError
from bcfl_cli.protocol.encoding import is_hash_hex, parse_json
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.content_record import new_content_sum
from bcfl_cli.store.writeback import WRITEBACK_BYTES, start_writeback
from bcfl_cli.wire.httpsig import content_digest
from bcfl_cli.wire.refusal import Refusal

if sys.platform != "win32":
    import fcntl  # only the partial files' locks; see _try_lock

Progress = Callable[[int, int], None]

MIN_CHUNK = 64 * 1024
MAX_CHUNK = 64 * 1024 * 1024
READ_SIZE = 1024 * 1024
MAX_ATTEMPTS = 5
#: An upload status or a chunk's acknowledgement is a small JSON object (three fields).
MAX_STATUS_BYTES = 4096
#: Chunks a ``SharedChunks`` keeps for the slower pushes of the same blob (16 MiB at 4 MiB:
#: the pushes go nearly in step; a 40 MB update's trainer counts every MiB it holds).
SHARED_CHUNKS = 4


class StreamSink(Protocol):
    """Something computed from a blob's bytes as they stream in (a node's update summary,
    ``node.blob_service``), so that nothing has to read the file again for it."""

    def feed(self, data: bytes) -> None:
        """The next bytes, in order; never raises (any doubt: the sink keeps nothing)."""

    def finish(self, digest: str) -> None:
        """Every byte fed, and exactly those, hashed to ``digest`` and the blob is stored."""


#: A sink for a whole download of so many bytes, or None (nothing wanted of this one).
SinkFactory = Callable[[int], "StreamSink | None"]


class FetchCancelled(BcflError):
    """The caller gave up on this download (its ``cancel`` event is set)."""


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


_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


if sys.platform == "win32":

    def _try_lock(fd: int) -> bool:
        """No ``flock`` here: granted (renaming a file that another process holds open fails)."""
        return True

else:

    def _try_lock(fd: int) -> bool:
        """Exclusive ``flock`` without waiting; False when another holds it.

        Released by the kernel when its holder closes the file or dies.
        """
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        return True


class _Attempt:
    """One download attempt's own partial file, locked (``flock``) while the attempt runs."""

    def __init__(self, store: BlobStore, digest: str) -> None:
        self.tmp = store.root / "tmp"
        self.digest = digest
        self.parked = self.tmp / f"fetch-{digest}.part"
        self.path = self.tmp / f"fetch-{digest}.{secrets.token_hex(8)}.part"
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | _CLOEXEC, 0o600)
        _try_lock(fd)  # a new name: nobody else holds it
        self._fd = fd
        self._claim()

    def _claim(self) -> None:
        """Take over the parked partial file, else one whose attempt's process died."""
        candidates = [self.parked, *sorted(self.tmp.glob(f"fetch-{self.digest}.*.part"))]
        for candidate in candidates:
            if candidate == self.path:
                continue
            try:
                fd = os.open(candidate, os.O_RDWR | _CLOEXEC)
            except OSError:
                continue
            if not _try_lock(fd):
                os.close(fd)  # a running attempt's file (or being claimed right now)
                continue
            try:
                # Locked; still the file at that name (not moved away before we locked it)?
                if os.stat(candidate).st_ino != os.fstat(fd).st_ino:
                    raise FileNotFoundError(candidate)
                os.replace(candidate, self.path)
            except OSError:
                os.close(fd)
                continue
            os.close(self._fd)  # the empty file we made was replaced by the claimed one
            self._fd = fd
            return

    def park(self, store: BlobStore) -> None:
        """Leave the bytes for the next attempt, which checks them against the manifest before
        it resumes from them (or nothing once the blob is held)."""
        try:
            size = os.fstat(self._fd).st_size
            if size == 0 or store.has(self.digest):
                self.path.unlink(missing_ok=True)
                return
            try:
                parked = self.parked.stat().st_size
            except FileNotFoundError:
                parked = -1
            if size > parked:
                os.replace(self.path, self.parked)
            else:
                self.path.unlink(missing_ok=True)
        except OSError:
            pass
        finally:
            self.close()

    @property
    def fileno(self) -> int:
        return self._fd

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # releases the lock
            self._fd = -1


def fetch_blob(
    client: SignedClient,
    digest: str,
    store: BlobStore,
    *,
    max_bytes: int,
    progress: Progress | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    cancel: threading.Event | None = None,
    whole_first: bool = False,
    sink: SinkFactory | None = None,
) -> str:
    """Download blob ``digest`` from the peer behind ``client`` into ``store``; resumable.

    ``cancel``, once set, stops the download at the next piece received (``FetchCancelled``);
    its bytes are parked for the next attempt, which re-checks them chunk by chunk.

    ``whole_first`` (a node catching up): when there is nothing to resume from, first try the
    whole blob in one request, hashed as it streams and adopted with that digest
    (``_download_whole``); only if that stream breaks is the manifest fetched and the download
    resumed from its checked chunks. Its bytes are checked against the content address at the
    end either way: the per-chunk hashes serve resuming, and a first attempt needs none.

    ``sink``: given the size the peer announces for a whole download, what to feed its bytes
    to as they stream (``StreamSink``); finished only once they hashed to ``digest`` and were
    adopted. A resumed download feeds none: whatever it was for is computed from the file.
    """
    _check_hash(digest)
    if store.has(digest) and store.verify(digest):
        return digest
    attempt = _Attempt(store, digest)
    try:
        part = attempt.path
        if whole_first and os.fstat(attempt.fileno).st_size == 0:
            try:
                _download_whole(client, digest, store, part, max_bytes, progress, cancel, sink)
                return digest
            except (httpx.TransportError, NodeError) as exc:
                if isinstance(exc, Refusal) and exc.kind == "refused":
                    raise
                # what arrived is resumed from, once the manifest has checked it
            _check_cancel(cancel, digest)  # given up on meanwhile: no second request
        manifest = fetch_manifest(client, digest, max_bytes=max_bytes)
        done = _resume_point(part, manifest)
        failures = 0
        while done < manifest.size:
            _check_cancel(cancel, digest)
            before = done
            try:
                done = _download_from(client, manifest, part, done, progress, cancel)
            except (httpx.TransportError, NodeError) as exc:
                if isinstance(exc, Refusal) and exc.kind == "refused":
                    raise
                done = part.stat().st_size  # cut back to the last whole, checked chunk
                failures = 0 if done > before else failures + 1
                if failures >= max_attempts:
                    raise NodeError(
                        f"download of {digest} stalled at {done}/{manifest.size} bytes: {exc}",
                        hint="the partial file is kept; run the same command again to resume",
                    ) from exc
                if cancel is not None:
                    cancel.wait(min(0.1 * 2**failures, 2.0))
                else:
                    time.sleep(min(0.1 * 2**failures, 2.0))
        _adopt(store, part, digest)
    finally:
        attempt.park(store)
    # Another attempt that gave up may have parked its chunks meanwhile: no longer needed.
    with contextlib.suppress(OSError):
        _drop_parked(attempt.parked)
    return digest


def _check_cancel(cancel: threading.Event | None, digest: str) -> None:
    if cancel is not None and cancel.is_set():
        raise FetchCancelled(f"download of {digest} cancelled")


def _drop_parked(parked: Path) -> None:
    """Remove a parked partial file, unless an attempt is claiming it right now."""
    fd = os.open(parked, os.O_RDWR | _CLOEXEC)
    try:
        if _try_lock(fd) and os.stat(parked).st_ino == os.fstat(fd).st_ino:
            parked.unlink()
    finally:
        os.close(fd)


def _adopt(store: BlobStore, part: Path, digest: str) -> None:
    """Move a complete, fsynced partial file into the store once its whole hash is checked.

    Same end as ``BlobStore.put_stream`` (a rename within the store's file system) without
    copying the file again.
    """
    try:
        store.adopt(part, expected=digest, max_bytes=os.path.getsize(part))
    except BlobError as exc:
        raise BlobError(f"downloaded blob {digest}: {exc.message}") from exc


def _download_whole(
    client: SignedClient,
    digest: str,
    store: BlobStore,
    part: Path,
    max_bytes: int,
    progress: Progress | None,
    cancel: threading.Event | None,
    sink: SinkFactory | None = None,
) -> None:
    """The whole blob in one request, written to the empty ``part`` and hashed as it streams,
    then adopted with that digest: one pass over the bytes, no manifest, no re-read.

    The peer's ``Content-Length`` is checked against ``max_bytes`` before a byte is read, and
    no byte past it is taken. A stream that breaks leaves its bytes in ``part`` (unchecked; the
    caller resumes after checking them against the manifest); a whole stream that does not hash
    to ``digest`` leaves nothing (BlobError: the peer serves corrupt data).
    """
    with client.stream("GET", f"/blobs/{digest}") as response:
        length = response.headers.get("content-length", "")
        if response.status_code != 200 or not (length.isascii() and length.isdigit()):
            raise NodeError(f"peer sent blob {digest} without its length")
        if len(length) > 19 or int(length) > max_bytes:
            raise BlobError(f"blob {digest} has {length[:20]} bytes, over the limit of {max_bytes}")
        size = int(length)
        hasher = hashlib.sha256()
        fed = sink(size) if sink is not None else None
        summer = new_content_sum()  # of the same bytes: the store's cheap re-check later
        got = written_out = 0
        with open(part, "r+b") as out:
            try:
                for piece in response.iter_raw():
                    _check_cancel(cancel, digest)
                    got += len(piece)
                    if got > size:
                        raise NodeError(f"peer sent more than the {size} bytes of {digest}")
                    hasher.update(piece)
                    summer.update(piece)
                    out.write(piece)
                    if fed is not None:
                        fed.feed(piece)
                    if got - written_out >= WRITEBACK_BYTES:  # the disk works as bytes arrive
                        out.flush()
                        start_writeback(out.fileno(), written_out, got - written_out)
                        written_out = got
                    if progress is not None:
                        progress(got, size)
            finally:
                out.flush()  # adopt fsyncs a whole stream; a broken one is re-checked first
    if got != size:
        raise NodeError(f"peer closed the stream of {digest} at {got}/{size} bytes")
    try:
        store.adopt(
            part,
            expected=digest,
            max_bytes=size,
            known_digest=hasher.hexdigest(),
            known_sum=summer.hexdigest(),
        )
    except BlobError as exc:
        raise BlobError(
            f"downloaded blob {digest}: {exc.message}; the peer serves corrupt data"
        ) from exc
    if fed is not None:
        fed.finish(digest)  # adopted under digest: the bytes fed hashed to it


def _download_from(
    client: SignedClient,
    manifest: BlobManifest,
    part: Path,
    done: int,
    progress: Progress | None,
    cancel: threading.Event | None = None,
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
                    _check_cancel(cancel, manifest.hash)
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
                            _check_cancel(cancel, manifest.hash)
            finally:
                out.truncate(done)
                out.flush()
                os.fsync(out.fileno())
    if done != manifest.size:
        raise NodeError(f"peer closed the stream at {done}/{manifest.size} bytes")
    return done


def _answer(response: httpx.Response) -> dict[str, Any]:
    """A peer's JSON object answer, or NodeError: never ``RecursionError`` or ``KeyError``."""
    try:
        value = parse_json(response.content, max_bytes=MAX_STATUS_BYTES)
    except EncodingError as exc:
        raise NodeError(f"peer sent a malformed answer: {exc.message}") from exc
    if not isinstance(value, dict):
        raise NodeError("peer sent an answer that is not a JSON object")
    return value


def _count(answer: dict[str, Any], name: str) -> int:
    value = answer.get(name)
    if type(value) is not int:
        raise NodeError(f"peer sent an upload status without an integer {name!r}")
    return value


class SharedChunks:
    """One blob's chunks, each read and digested once for the several peers it is pushed to.

    A trainer pushed its 440 MB update to three peers from three threads, each reading every
    chunk and hashing it for its ``Content-Digest``: 1.3 GB of SHA-256 where 440 MB is the
    work (issue 19). The first thread to want a chunk reads and digests it; the others wait for
    that result. Only the last ``keep`` chunks are kept (memory bounded whatever the blob); a
    push that falls further behind reads and digests its chunks itself, as before.
    """

    def __init__(
        self, *, keep: int = SHARED_CHUNKS, on_read: Callable[[int, bytes], None] | None = None
    ) -> None:
        self._keep = keep
        #: told (offset, bytes) of each chunk read, by the reading thread, before the others
        #: get it: a chunk's successor is read only after it was told (the pushes go in order)
        self._on_read = on_read
        self._lock = threading.Lock()
        self._chunks: OrderedDict[tuple[int, int], Future[tuple[bytes, str]]] = OrderedDict()

    def chunk(self, chunk_size: int, index: int, read: Callable[[], bytes]) -> tuple[bytes, str]:
        """Chunk ``index`` (of ``chunk_size`` bytes) and its ``Content-Digest``; ``read``
        reads it from the caller's own open file when no other push has yet."""
        key = (chunk_size, index)
        with self._lock:
            pending = self._chunks.get(key)
            mine = pending is None
            if pending is None:
                pending = self._chunks[key] = Future()
                while len(self._chunks) > self._keep:
                    self._chunks.popitem(last=False)
        if mine:
            try:
                data = read()
                if self._on_read is not None:
                    self._on_read(index * chunk_size, data)
                pending.set_result((data, content_digest(data)))
            except BaseException as exc:
                pending.set_exception(exc)
                with self._lock:
                    if self._chunks.get(key) is pending:
                        del self._chunks[key]
                raise
        return pending.result()


def _read_chunk(f: BinaryIO, chunk_size: int, index: int, size: int) -> bytes:
    f.seek(index * chunk_size)
    return f.read(min(chunk_size, size - index * chunk_size))


def upload_blob(
    client: SignedClient,
    digest: str,
    store: BlobStore,
    *,
    progress: Progress | None = None,
    max_attempts: int = MAX_ATTEMPTS,
    shared: SharedChunks | None = None,
) -> None:
    """Upload a stored blob to the peer behind ``client``, resuming where the peer stands.

    ``shared``: the chunks of this blob as other concurrent pushes of it read them."""
    _check_hash(digest)
    size = store.size(digest)
    failures = 0
    with store.open(digest) as f:
        while True:
            status = _answer(client.get(f"/blobs/{digest}/upload", params={"size": size}))
            if status.get("complete") is True:
                break
            chunk_size = _count(status, "chunk_size")
            received = _count(status, "received")
            if not MIN_CHUNK <= chunk_size <= MAX_CHUNK or not 0 <= received <= size:
                raise NodeError(f"peer sent an inconsistent upload status: {str(status)[:200]}")
            before = received
            try:
                complete = False
                while received < size and not complete:
                    index = received // chunk_size
                    read = functools.partial(_read_chunk, f, chunk_size, index, size)
                    if shared is None:
                        data, chunk_digest = read(), None
                    else:
                        data, chunk_digest = shared.chunk(chunk_size, index, read)
                    answer = _answer(
                        client.put(
                            f"/blobs/{digest}/chunks/{index}",
                            params={"size": size},
                            content=data,
                            content_digest=chunk_digest,
                        )
                    )
                    received = _count(answer, "received")
                    if progress is not None:
                        progress(received, size)
                    complete = answer.get("complete") is True
                if not complete:
                    client.put(f"/blobs/{digest}", params={"size": size}, content=b"")
                break
            except NodeError as exc:
                if (
                    isinstance(exc, Refusal)
                    and exc.answered
                    and exc.code not in {"out_of_order", "incomplete"}
                ):
                    raise
                failures = 0 if received > before else failures + 1
                if failures >= max_attempts:
                    raise NodeError(
                        f"upload of {digest} stalled at {received}/{size} bytes: {exc}",
                        hint="run the same command again to resume",
                    ) from exc
