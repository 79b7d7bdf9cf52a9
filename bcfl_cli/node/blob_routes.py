"""Blob routes: models and updates move between peers in chunks, streamed to and from disk.

Routes (``{hash}`` is always checked to be 64 lowercase hex before use; no file name is ever
taken from a request, so ``..%2F..`` can name nothing):

- ``GET /blobs/{hash}`` (public): the blob, streamed from disk; a single ``Range: bytes=a-`` or
  ``bytes=a-b`` is honoured (206) so a download resumes where it broke off.
- ``GET /blobs/{hash}/manifest`` (public): ``{"hash", "size", "chunk_size", "chunks"}`` with the
  SHA-256 of every ``chunk_size`` slice, so a client checks each chunk as it lands.
- ``GET /blobs/{hash}/upload?size=N`` (public): ``{"received", "chunk_size", "complete"}``, where
  the signer's interrupted upload stands (an unsigned request has none: ``received`` 0).
- ``PUT /blobs/{hash}/chunks/{i}?size=N`` (signed, member): chunk ``i`` of a blob of ``N`` bytes;
  every chunk but the last has exactly ``chunk_size`` bytes. Chunks are appended in order to the
  signer's own partial file ``tmp/up-{signer tag}-{hash}-{N}.part``; a chunk already received is
  acknowledged again (so retries are harmless), one beyond the next expected is refused (409)
  with where to resume.
  The signature layer has already checked the chunk against its signed Content-Digest. A blob
  of one chunk is stored on arrival if it hashes to ``{hash}`` (``"complete": true``; 422
  otherwise): no partial file, no finalise.
- ``PUT /blobs/{hash}?size=N`` (signed, member, empty body): finalise; the partial file is
  renamed into the store by ``BlobStore.adopt(expected=hash, max_bytes=N)``, which keeps it
  only if the whole hash matches (422 otherwise, and the partial file is dropped). The whole
  hash is the running one, updated as each chunk was appended (by the appending thread, after
  the write); a partial file this process did not append whole (it restarted, a write failed)
  is hashed again in pieces. A 440 MB update is written to disk once, never copied nor held
  whole, and hashed once on arrival. With ``summaries`` (a node's), each appended chunk also
  feeds a ``StreamedSummary`` (the layout and the exact sum of squares the contract needs) on
  one worker thread, after the chunk is acknowledged, so that the uploader's next chunk is not
  held up by it (at most ``SUMMARY_BACKLOG_BYTES`` an upload wait there; past that the upload
  gets no summary); finalising waits for its summary, and a blob adopted under the running hash
  leaves its summary there, so the contract's check of that update reads no byte of it again
  (issue 19).

The genesis cap (``max_blob_bytes``) is enforced before any byte is stored: a ``size`` over it is
refused (413 ``blob_too_large``) on every route, a chunk never reaches past ``size``, and what a
node holds in memory for an upload is one chunk (the signature layer's digest check).

Chosen over ``Content-Range`` uploads because every request stays small enough for the signature
layer to read and digest-check whole before anything is written.

Upload slots are per member: each signer holds at most ``max_uploads_per_member`` partial files
(503 ``busy`` past it, naming its own uploads), all members together at most
``max_pending_uploads`` (a bound on disk, not reachable by one member), and a partial file no
chunk has touched for ``STALE_UPLOAD_S`` is dropped when a slot is next wanted. One member
holding every slot, or appending junk to another member's upload of the same blob, was possible
while the slots and the partial files were shared.

With a ``BlobKeeper`` (a node's), a blob stored by an upload counts against the signer's quota
of blobs no block references; past it, ``507 over_quota`` (see ``blob_keeper``).
"""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp

from bcfl_cli.errors import BlobError
from bcfl_cli.fl.update_summary import StreamedSummary, UpdateSummaries, UpdateSummary
from bcfl_cli.node.auth import SignatureAuth, peer_did
from bcfl_cli.node.blob_keeper import BlobKeeper
from bcfl_cli.node.limits import NodeLimits
from bcfl_cli.node.logging import fields
from bcfl_cli.node.traffic import BlobTraffic
from bcfl_cli.protocol.encoding import is_hash_hex
from bcfl_cli.store.blobs import DEFAULT_MAX_BLOB_BYTES, BlobStore
from bcfl_cli.store.content_record import new_content_sum
from bcfl_cli.wire.refusal import Refusal

log = logging.getLogger("bcfl.node")

CHUNK_SIZE = 4 * 1024 * 1024
READ_SIZE = 1024 * 1024
#: Partial uploads one member (signer) may hold at once.
MAX_UPLOADS_PER_MEMBER = 2
#: Partial uploads of all members together: a bound on the disk they use, not a shared slot
#: pool (one member reaches only its own share).
MAX_PENDING_UPLOADS = 64
#: A partial upload no chunk has reached for this long is dropped (a client resumes within it).
STALE_UPLOAD_S = 600
MANIFEST_CACHE = 64
#: Bytes of one upload's chunks acknowledged but not yet summarised; past it the upload gets
#: no summary (its update is then checked in full, as before): memory bounded per upload.
SUMMARY_BACKLOG_BYTES = 16 * 1024 * 1024


def _error(status: int, code: str, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": code, "message": message, **extra}, status_code=status)


def compute_manifest(store: BlobStore, digest: str, chunk_size: int) -> dict[str, Any]:
    """Per-chunk hashes of a stored blob, also checking the whole hash on the way."""
    whole = hashlib.sha256()
    chunks: list[str] = []
    size = 0
    with store.open(digest) as f:
        for piece in iter(lambda: f.read(chunk_size), b""):
            whole.update(piece)
            chunks.append(hashlib.sha256(piece).hexdigest())
            size += len(piece)
    if whole.hexdigest() != digest:
        raise BlobError(f"blob {digest} is corrupt: its content does not match its name")
    return {"hash": digest, "size": size, "chunk_size": chunk_size, "chunks": chunks}


class BlobRoutes:
    """The blob routes over one BlobStore; ``routes`` go into the node's Starlette app."""

    def __init__(
        self,
        store: BlobStore,
        *,
        max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        chunk_size: int = CHUNK_SIZE,
        max_pending_uploads: int = MAX_PENDING_UPLOADS,
        max_uploads_per_member: int = MAX_UPLOADS_PER_MEMBER,
        stale_upload_s: float = STALE_UPLOAD_S,
        clock: Callable[[], float] = time.time,
        keeper: BlobKeeper | None = None,
        allow_clear_text: bool = True,
        traffic: BlobTraffic | None = None,
        summaries: UpdateSummaries | None = None,
    ) -> None:
        self.store = store
        self.summaries = summaries
        #: one thread summarises every upload's chunks in arrival order (``_Running``)
        self._summarising = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcfl-summary")
            if summaries is not None
            else None
        )
        self.traffic = traffic if traffic is not None else BlobTraffic()
        self.allow_clear_text = allow_clear_text  # False: no blob over plain HTTP off loopback
        self.max_blob_bytes = max_blob_bytes
        self.chunk_size = chunk_size
        self.max_pending_uploads = max_pending_uploads
        self.max_uploads_per_member = max_uploads_per_member
        self.stale_upload_s = stale_upload_s
        self._clock = clock
        self.keeper = keeper
        self._tmp = store.root / "tmp"
        self._manifests: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._locks: dict[str, asyncio.Lock] = {}
        #: the SHA-256 of each partial upload so far, updated as its chunks are appended, so
        #: that finalising does not read the file again (by partial file name; see _Running)
        self._running: dict[str, _Running] = {}

    @property
    def routes(self) -> list[Route]:
        return [
            Route("/blobs/{hash}", self.get_blob, methods=["GET"]),
            Route("/blobs/{hash}", self.finalise, methods=["PUT"]),
            Route("/blobs/{hash}/manifest", self.manifest, methods=["GET"]),
            Route("/blobs/{hash}/upload", self.upload_status, methods=["GET"]),
            Route("/blobs/{hash}/chunks/{index}", self.put_chunk, methods=["PUT"]),
        ]

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _hash(request: Request) -> str:
        digest = request.path_params.get("hash")
        if not is_hash_hex(digest):
            raise Refusal(
                "a blob is named by 64 lowercase hex (its SHA-256)", status=400, code="bad_hash"
            )
        return str(digest)

    def _size(self, request: Request) -> int:
        raw = request.query_params.get("size", "")
        if not (raw.isascii() and raw.isdigit()) or len(raw) > 19:
            raise Refusal("give the blob size as ?size=BYTES", status=400, code="bad_size")
        size = int(raw)
        if size > self.max_blob_bytes:
            raise Refusal(
                f"blob of {size} bytes is over this consortium's limit of "
                f"{self.max_blob_bytes}",
                status=413,
                code="blob_too_large",
            )
        return size

    def _part(self, request: Request, digest: str, size: int) -> Path:
        """The signer's partial file of this blob: built from a hash of the verified did, the
        validated hash and an integer only, never from text of the request."""
        return self._tmp / f"up-{_signer_tag(peer_did(request))}-{digest}-{size}.part"

    def _lock(self, part: Path) -> asyncio.Lock:
        lock = self._locks.get(part.name)
        if lock is None:
            if len(self._locks) >= 4 * self.max_pending_uploads:
                for name in [n for n, held in self._locks.items() if not held.locked()]:
                    del self._locks[name]
            lock = self._locks[part.name] = asyncio.Lock()
        return lock

    def _pending(self, tag: str = "") -> list[Path]:
        return sorted(self._tmp.glob(f"up-{tag}*.part"))

    def _drop_stale(self) -> None:
        horizon = self._clock() - self.stale_upload_s
        for part in self._pending():
            try:
                if part.stat().st_mtime < horizon:
                    part.unlink()
            except FileNotFoundError:
                continue

    def _over_quota(self, request: Request, digest: str, size: int) -> JSONResponse | None:
        """507 ``over_quota`` if storing this blob would pass the signer's quota (blob_keeper)."""
        did = peer_did(request)
        if self.keeper is None or did is None:
            return None
        refusal = self.keeper.admit(did, digest, size)
        if refusal is None:
            return None
        return _error(507, "over_quota", refusal + "; wait until the chain names them")

    def _stored(self, request: Request, digest: str, size: int) -> None:
        did = peer_did(request)
        if self.keeper is not None and did is not None:
            self.keeper.record(did, digest, size)

    def _take_slot(
        self, request: Request, part: Path, digest: str, size: int
    ) -> JSONResponse | None:
        """Make ``part`` the signer's new partial upload, or say why not (503 ``busy``, 507
        ``over_quota``)."""
        over = self._over_quota(request, digest, size)
        if over is not None:
            return over
        self._drop_stale()
        tag = _signer_tag(peer_did(request))
        mine = self._pending(tag + "-")
        if len(mine) >= self.max_uploads_per_member:
            return _error(
                503,
                "busy",
                f"you have {len(mine)} uploads in progress here, the most one member may; "
                f"finish them, or retry once one has had no chunk for {self.stale_upload_s:.0f} s",
            )
        if len(self._pending()) >= self.max_pending_uploads:
            return _error(503, "busy", "too many uploads in progress here; retry in a minute")
        part.touch()
        return None

    # -- routes ----------------------------------------------------------------------------

    async def get_blob(self, request: Request) -> Response:
        try:
            digest = self._hash(request)
        except Refusal as bad:
            return _error(bad.status, bad.code, bad.message)
        if not self.allow_clear_text and _in_clear_off_loopback(request):
            return _error(
                403,
                "clear_text",
                "this node sends no blob unencrypted to another machine; call it over https",
            )
        if not self.store.has(digest):
            return _error(404, "no_blob", f"this node has no blob {digest}; ask another peer")
        size = self.store.size(digest)
        start, end = 0, size - 1
        status = 200
        headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream"}
        wanted = request.headers.get("range")
        if wanted is not None:
            parsed = _parse_range(wanted, size)
            if parsed is None:
                return Response(status_code=416, headers={"Content-Range": f"bytes */{size}"})
            start, end = parsed
            status = 206
            headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        length = max(0, end - start + 1)
        headers["Content-Length"] = str(length)
        return StreamingResponse(
            _read_range(self.store, digest, start, length, self.traffic),
            status_code=status,
            headers=headers,
        )

    async def manifest(self, request: Request) -> Response:
        try:
            digest = self._hash(request)
        except Refusal as bad:
            return _error(bad.status, bad.code, bad.message)
        cached = self._manifests.get(digest)
        if cached is None:
            if not self.store.has(digest):
                return _error(404, "no_blob", f"this node has no blob {digest}; ask another peer")
            try:
                cached = await run_in_threadpool(
                    compute_manifest, self.store, digest, self.chunk_size
                )
            except BlobError as exc:
                return _error(500, "corrupt_blob", exc.message)
            self._manifests[digest] = cached
            while len(self._manifests) > MANIFEST_CACHE:
                self._manifests.popitem(last=False)
        return JSONResponse(cached)

    async def upload_status(self, request: Request) -> Response:
        try:
            digest, size = self._hash(request), self._size(request)
        except Refusal as bad:
            return _error(bad.status, bad.code, bad.message)
        complete = self.store.has(digest)
        part = self._part(request, digest, size)
        received = size if complete else (part.stat().st_size if part.exists() else 0)
        return JSONResponse(
            {"received": received, "chunk_size": self.chunk_size, "complete": complete}
        )

    async def put_chunk(self, request: Request) -> Response:
        try:
            digest, size = self._hash(request), self._size(request)
        except Refusal as bad:
            return _error(bad.status, bad.code, bad.message)
        raw_index = request.path_params.get("index", "")
        chunks = -(-size // self.chunk_size)
        raw_index = str(raw_index)
        if not (raw_index.isascii() and raw_index.isdigit()) or len(raw_index) > 19:
            return _error(400, "bad_chunk", f"chunk index must be 0..{chunks - 1}")
        if int(raw_index) >= chunks:
            return _error(400, "bad_chunk", f"chunk index must be 0..{chunks - 1}")
        index = int(raw_index)
        offset = index * self.chunk_size
        expected_len = min(self.chunk_size, size - offset)
        # The signature layer has read and digest-checked the body already; the cap here only
        # keeps these routes safe if someone mounts them without that layer.
        pieces: list[bytes] = []
        got = 0
        async for piece in request.stream():
            got += len(piece)
            if got > self.chunk_size:
                return _error(
                    413, "chunk_too_large", f"a chunk has at most {self.chunk_size} bytes"
                )
            if piece:  # Starlette ends every stream with b"": joined, it would copy the chunk
                pieces.append(piece)
        body = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        self.traffic.received(len(body))
        if len(body) != expected_len:
            return _error(
                400, "bad_chunk", f"chunk {index} must have {expected_len} bytes, got {len(body)}"
            )
        if self.store.has(digest):
            if self.keeper is not None:
                self.keeper.sent_again(digest)
            return JSONResponse({"received": size, "complete": True})
        if expected_len == size:
            # A one-chunk blob (every update of a small model) is whole on arrival: keep it if
            # it hashes to its name, with no partial file and no finalise round trip.
            over = self._over_quota(request, digest, size)
            if over is not None:
                return over
            try:
                await run_in_threadpool(self.store.put_stream, [body], expected=digest)
            except BlobError as exc:
                return _error(422, "hash_mismatch", exc.message + "; upload it again")
            self._stored(request, digest, size)
            return JSONResponse({"received": size, "complete": True})
        part = self._part(request, digest, size)
        async with self._lock(part):
            if not part.exists():
                busy = self._take_slot(request, part, digest, size)
                if busy is not None:
                    return busy
            received = part.stat().st_size
            if offset > received:
                return _error(
                    409,
                    "out_of_order",
                    f"expected chunk {received // self.chunk_size} next; resume from there",
                    received=received,
                )
            if offset == received:
                running = self._running_hash(part.name, received, size)
                try:
                    await run_in_threadpool(_append, part, body, running)
                except BaseException:
                    self._running.pop(part.name, None)  # the file may hold part of the chunk
                    raise
                received += len(body)
        return JSONResponse({"received": received, "complete": False})

    def _running_hash(self, name: str, received: int, size: int) -> _Running | None:
        """The running hash of partial upload ``name`` if it covers its ``received`` bytes
        (a new upload starts one); None when it does not (this process did not append them
        all: it restarted, or an append failed), and finalising then hashes the file."""
        running = self._running.get(name)
        if received == 0:
            summary = StreamedSummary(size) if self._summarising is not None else None
            running = self._running[name] = _Running(summary, self._summarising)
            if len(self._running) > 4 * self.max_pending_uploads:  # files dropped as stale
                for old in [n for n in self._running if not (self._tmp / n).exists()]:
                    del self._running[old]
        if running is not None and running.size != received:
            del self._running[name]
            return None
        return running

    async def finalise(self, request: Request) -> Response:
        try:
            digest, size = self._hash(request), self._size(request)
        except Refusal as bad:
            return _error(bad.status, bad.code, bad.message)
        if self.store.has(digest):
            if self.keeper is not None:
                self.keeper.sent_again(digest)
            return JSONResponse({"hash": digest, "size": self.store.size(digest)})
        part = self._part(request, digest, size)
        async with self._lock(part):
            if size == 0:
                part.touch()
            received = part.stat().st_size if part.exists() else 0
            if received != size:
                return _error(
                    409,
                    "incomplete",
                    f"received {received} of {size} bytes; upload the missing chunks first",
                    received=received,
                )
            over = self._over_quota(request, digest, size)
            if over is not None:
                part.unlink(missing_ok=True)
                return over
            running = self._running.pop(part.name, None)
            whole = running is not None and running.size == size
            known = running.hexdigest() if running is not None and whole else None
            summed = running.summer.hexdigest() if running is not None and whole else None
            try:
                await run_in_threadpool(_store_part, self.store, part, digest, size, known, summed)
            except BlobError as exc:
                return _error(422, "hash_mismatch", exc.message + "; upload it again")
            finally:
                part.unlink(missing_ok=True)
                self._locks.pop(part.name, None)
            self._stored(request, digest, size)
            if known is not None and running is not None and self.summaries is not None:
                summary = await running.summarised()
                if summary is not None:
                    self.summaries.put(digest, summary)  # of bytes that hashed to its name
        log.info(
            "blob uploaded",
            extra=fields(blob=digest, size=size, hashed_again=known is None, by=peer_did(request)),
        )
        return JSONResponse({"hash": digest, "size": size}, status_code=201)


def _in_clear_off_loopback(request: Request) -> bool:
    """A plain-HTTP request from another machine (issue 22: no model in clear). A client that
    is no IP address (a Unix socket, an in-process test client) is on this machine."""
    if request.url.scheme == "https":
        return False
    host = request.client.host if request.client is not None else ""
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _signer_tag(did: str | None) -> str:
    """A file-name-safe stand-in for a signer (16 hex of the did's SHA-256)."""
    if did is None:
        return "unsigned"
    return hashlib.sha256(did.encode("utf-8")).hexdigest()[:16]


def _parse_range(value: str, size: int) -> tuple[int, int] | None:
    """One ``bytes=a-b`` / ``bytes=a-`` range within the blob; None when unsatisfiable."""
    if not value.startswith("bytes=") or "," in value:
        return None
    first, _, last = value[6:].strip().partition("-")
    if not all(v.isascii() and v.isdigit() and len(v) <= 19 for v in (first, last or "0")):
        return None
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or end < start:
        return None
    return start, end


def _read_range(
    store: BlobStore, digest: str, start: int, length: int, traffic: BlobTraffic
) -> Iterator[bytes]:
    """``length`` bytes from ``start``, READ_SIZE at a time: Starlette pulls the next piece only
    once the last one is sent, so a slow reader holds one piece here, never the blob."""
    with store.open(digest) as f:
        f.seek(start)
        remaining = length
        while remaining > 0:
            data = f.read(min(READ_SIZE, remaining))
            if not data:
                return
            remaining -= len(data)
            traffic.sent(len(data))
            yield data


class _Running:
    """The SHA-256 of the first ``size`` bytes of a partial upload, as they were appended,
    and the contract's summary of them (when the node keeps summaries), fed on ``worker``."""

    def __init__(
        self, summary: StreamedSummary | None = None, worker: ThreadPoolExecutor | None = None
    ) -> None:
        self.hasher = hashlib.sha256()
        #: the content sum of the same bytes, noted by the store (store/content_record.py)
        self.summer = new_content_sum()
        self.size = 0
        self._summary = summary if worker is not None else None
        self._worker = worker
        self._lock = threading.Lock()
        self._backlog = 0
        self._last: Future[None] | None = None

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()

    def summarise(self, data: bytes) -> None:
        """Queue ``data`` (the next bytes, in order) for the summary; dropped for good once
        more than ``SUMMARY_BACKLOG_BYTES`` wait (the worker fell behind)."""
        if self._summary is None or self._worker is None:
            return
        with self._lock:
            if self._backlog + len(data) > SUMMARY_BACKLOG_BYTES:
                self._summary = None
                return
            self._backlog += len(data)
        self._last = self._worker.submit(self._feed, self._summary, data)

    def _feed(self, summary: StreamedSummary, data: bytes) -> None:
        try:
            summary.feed(data)
        finally:
            with self._lock:
                self._backlog -= len(data)

    async def summarised(self) -> UpdateSummary | None:
        """The summary of every byte appended, once the worker has fed them all (one worker,
        first in first out: the last chunk done means all are)."""
        if self._last is not None:
            await asyncio.wrap_future(self._last)
        summary = self._summary
        return summary.result() if summary is not None else None


def _append(part: Path, data: bytes, running: _Running | None = None) -> None:
    """Append a chunk to its partial file, then to the upload's running hash (only once the
    bytes are written: a failed write leaves the hash behind the file, never ahead)."""
    with open(part, "ab") as f:
        f.write(data)
    if running is not None:
        running.hasher.update(data)
        running.summer.update(data)
        running.size += len(data)
        running.summarise(data)


def _store_part(
    store: BlobStore,
    part: Path,
    digest: str,
    size: int,
    known: str | None = None,
    summed: str | None = None,
) -> None:
    """The finished partial file renamed into the store (never copied): hashed again only
    where no running hash covers all of it (``known``); ``summed``, the content sum of the
    same bytes, lets the aggregate re-check it without SHA-256 (store/content_record.py)."""
    store.adopt(part, expected=digest, max_bytes=size, known_digest=known, known_sum=summed)


def blob_app(
    store: BlobStore,
    *,
    is_member: Callable[[str], bool],
    max_blob_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    limits: NodeLimits | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> ASGIApp:
    """A minimal app serving only the blob routes behind the signature layer (tests, tools)."""
    routes = BlobRoutes(store, max_blob_bytes=max_blob_bytes, chunk_size=chunk_size)
    limits = limits or NodeLimits(max_body_bytes=chunk_size + 64 * 1024)
    return SignatureAuth(Starlette(routes=routes.routes), is_member=is_member, limits=limits)
