"""What the contract reads from an update, computed while its bytes stream in (issue 19).

A node receiving a 440 MB update already holds every chunk in memory once, to write it and to
hash it into the blob's name. The contract then read the file back, hashed it again and summed
its squares: a second and third pass over 440 MB for each of the round's updates, on every
validator, while the other trainer's push still held the cores. ``StreamedSummary`` is fed the
same chunks in order, beside the running hash, and keeps what the contract's verdict needs: the
header's layout (validated by the same code as ``TensorFile``) and the exact sum of squares in
2**-1074 units (``numerics.float32_squares_units``, the integer the contract's own pass
computes). ``UpdateSummaries`` holds the summaries of completed uploads by their hash; the
node keeps one only when the running hash over exactly the bytes fed equals the blob's name,
so a summary is a fact about that content and the verdict from it is bit for bit the one the
full check gives.

Only the common case is summarised: an all-float32 update of more than ``SMALL_SUM`` values,
every value finite, a header of at most ``MAX_HEADER_BYTES``. Anything else (another dtype, a
NaN, a header that does not parse, bytes past the size) leaves no summary, and the full check
decides as before, with the reason it names.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from concurrent.futures import Executor, Future
from dataclasses import dataclass

import numpy as np

from bcfl_cli.errors import ContractError
from bcfl_cli.fl.numerics import SMALL_SUM, float32_squares_units, from_units
from bcfl_cli.fl.tensorfile import PIECE_ELEMENTS, TensorFile
from bcfl_cli.fl.tensors import MAX_HEADER_BYTES

#: Summaries a node keeps (a few dozen bytes and a layout each): more than a round's updates.
MAX_UPDATE_SUMMARIES = 64


@dataclass(frozen=True)
class UpdateSummary:
    """The contract's facts about one blob's content: its size, its header's layout (name ->
    dtype, shape), all float32 and finite, and the exact sum of the squares of its values."""

    size: int
    layout: dict[str, tuple[str, list[int]]]
    squares_units: int

    @property
    def norm(self) -> float:
        """The exact L2 norm, as ``contract.finite_l2_norm`` rounds it."""
        return math.sqrt(from_units(self.squares_units))


class _Prefix:
    """The first bytes of a blob of ``size`` bytes as a ``ByteSource`` (header parsing only)."""

    def __init__(self, head: bytes, size: int) -> None:
        self._head = head
        self.size = size

    def read_into(self, offset: int, buffer: memoryview) -> None:
        end = offset + buffer.nbytes
        if not 0 <= offset <= end <= len(self._head):
            raise ContractError("malformed_blob", f"bytes {offset}..{end} not received yet")
        buffer[:] = self._head[offset:end]


class StreamedSummary:
    """Fed a blob's bytes in order (``feed``); ``result`` is its summary, or None when the
    full check must decide. Never raises: whatever arrives ends in a summary or in none."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._head = bytearray()
        self._layout: dict[str, tuple[str, list[int]]] | None = None
        self._carry = b""
        self._seen = 0
        self._units = 0
        self._failed = size < 8

    def feed(self, data: bytes | memoryview) -> None:
        if self._failed:
            return
        try:
            self._seen += len(data)
            if self._seen > self.size:
                raise ContractError("malformed_blob", "more bytes than the blob's size")
            if self._layout is None:
                self._read_header(data)
            else:
                self._add_values(memoryview(data))
        except Exception:  # any doubt: no summary, and the full check decides
            self._failed = True
            self._head = bytearray()

    def result(self) -> UpdateSummary | None:
        if self._failed or self._layout is None or self._seen != self.size or self._carry:
            return None
        return UpdateSummary(self.size, self._layout, self._units)

    def _read_header(self, data: bytes | memoryview) -> None:
        self._head += data
        if len(self._head) < 8:
            return
        header_len = int.from_bytes(self._head[:8], "little")
        if header_len > MAX_HEADER_BYTES:
            raise ContractError("malformed_blob", "header too long to summarise")
        data_start = 8 + header_len
        if len(self._head) < data_start:
            return
        head = bytes(self._head)
        self._head = bytearray()
        tensors = TensorFile(_Prefix(head, self.size), max_bytes=self.size)
        layout = tensors.layout
        elements = sum(math.prod(shape) for _, shape in layout.values())
        if elements <= SMALL_SUM or any(dtype != "F32" for dtype, _ in layout.values()):
            raise ContractError("wrong_dtype", "only large all-float32 updates are summarised")
        self._layout = layout
        self._add_values(memoryview(head)[data_start:])

    def _add_values(self, view: memoryview) -> None:
        if self._carry:  # a value split across two chunks
            take = min(4 - len(self._carry), len(view))
            self._carry += bytes(view[:take])
            view = view[take:]
            if len(self._carry) < 4:
                return
            self._add_floats(np.frombuffer(self._carry, dtype="<f4"))
            self._carry = b""
        whole = len(view) // 4 * 4
        if whole:
            self._add_floats(np.frombuffer(view[:whole], dtype="<f4"))
        self._carry = bytes(view[whole:])

    def _add_floats(self, values: np.ndarray) -> None:
        # a piece at a time, as the contract's own pass: the integer temporaries of a whole
        # 4 MiB chunk (~50 MB) would count in a validator's memory for each upload at once
        for start in range(0, values.shape[0], PIECE_ELEMENTS):
            piece = values[start : start + PIECE_ELEMENTS]
            if not np.isfinite(piece).all():
                raise ContractError("non_finite", "left to the full check, which names it")
            self._units += float32_squares_units(piece)


class SummaryFeed:
    """A ``StreamedSummary`` fed on a worker thread, with the SHA-256 of what it was fed.

    For a trainer's own update as its push reads it (``client.blobs.SharedChunks``): bytes are
    offered by offset from the threads that read them, taken only in order (one already fed is
    ignored, a gap ends the summary), queued at most ``backlog_bytes`` (past it, no summary),
    and ``result`` gives the summary only if what was fed hashes to the blob's name.
    """

    def __init__(self, size: int, worker: Executor, *, backlog_bytes: int) -> None:
        self._summary = StreamedSummary(size)
        self._hasher = hashlib.sha256()
        self._worker = worker
        self._limit = backlog_bytes
        self._lock = threading.Lock()
        self._next = 0
        self._backlog = 0
        self._dropped = False
        self._last: Future[None] | None = None

    def offer(self, offset: int, data: bytes) -> None:
        with self._lock:
            if self._dropped or offset < self._next:
                return
            if offset > self._next or self._backlog + len(data) > self._limit:
                self._dropped = True
                return
            self._next += len(data)
            self._backlog += len(data)
            self._last = self._worker.submit(self._feed, data)  # under the lock: in order

    def _feed(self, data: bytes) -> None:
        try:
            self._hasher.update(data)
            self._summary.feed(data)
        finally:
            with self._lock:
                self._backlog -= len(data)

    def result(self, digest: str) -> UpdateSummary | None:
        """Blocking: the summary once every byte offered is fed, if they hash to ``digest``."""
        if self._last is not None:
            self._last.result()
        with self._lock:
            if self._dropped:
                return None
        if self._hasher.hexdigest() != digest:
            return None
        return self._summary.result()


class UpdateSummaries:
    """Summaries of received blobs by hash, the last ``keep`` of them (thread-safe).

    A member that uploads many blobs only evicts summaries: an update without one is checked
    in full, as before, so eviction costs time, never a different verdict.
    """

    def __init__(self, *, keep: int = MAX_UPDATE_SUMMARIES) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._by_hash: OrderedDict[str, UpdateSummary] = OrderedDict()

    def put(self, digest: str, summary: UpdateSummary) -> None:
        with self._lock:
            self._by_hash[digest] = summary
            self._by_hash.move_to_end(digest)
            while len(self._by_hash) > self._keep:
                self._by_hash.popitem(last=False)

    def get(self, digest: str) -> UpdateSummary | None:
        with self._lock:
            return self._by_hash.get(digest)

    def __len__(self) -> int:
        with self._lock:
            return len(self._by_hash)


__all__ = [
    "MAX_UPDATE_SUMMARIES",
    "StreamedSummary",
    "SummaryFeed",
    "UpdateSummaries",
    "UpdateSummary",
]
