"""Early writeback: the kernel starts writing a file's new bytes to disk while more arrive.

A downloaded blob is fsynced before it is adopted; fsyncing 40 MB that all sat in the page cache
stalls its thread for the whole write-out once the last byte is in. Asking the kernel to start
each few MiB's write-out as soon as they are written (Linux ``sync_file_range`` with
``SYNC_FILE_RANGE_WRITE``: it queues the pages and returns, as RocksDB's ``bytes_per_sync``
does) overlaps the disk with the network, and the fsync at adoption finds little left to do.
Only a hint: durability still comes from that fsync, and where the call does not exist (not
Linux, no glibc symbol) nothing is done.
"""

from __future__ import annotations

import ctypes
import io
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

#: bytes written between two write-out requests of one file
WRITEBACK_BYTES = 4 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int, int, int, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        call = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    call.restype = ctypes.c_int
    return call


_CALL = _sync_file_range()


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Ask for ``length`` bytes of ``fd`` from ``offset`` to be written out, without waiting
    (the GIL is released for the call). Errors are ignored: the fsync that follows decides."""
    if _CALL is not None and length > 0:
        _CALL(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


class WritebackFile(io.BufferedWriter):
    """A file being written to be fsynced and kept (an update a trainer stores, an aggregate a
    node keeps): every ``every`` bytes written, their write-out starts (``start_writeback``).

    Its fsync then finds little left to write: on the round's critical path, a trainer's push
    starts only once its update is fsynced, and a node's proposal waits for its aggregate's
    (issue 19). The bytes and their order are those of a plain buffered file.
    """

    def __init__(self, raw: io.RawIOBase, every: int | None = None) -> None:
        super().__init__(raw)
        self._every = WRITEBACK_BYTES if every is None else every
        self._at = 0  # bytes written so far (the file is written from its start, in order)
        self._started = 0  # bytes whose write-out was asked for

    def write(self, buffer: ReadableBuffer, /) -> int:
        written = super().write(buffer)
        self._at += written
        if self._at - self._started >= self._every:
            self.flush()
            start_writeback(self.fileno(), self._started, self._at - self._started)
            self._started = self._at
        return written


def open_for_writeback(fd: int) -> WritebackFile:
    """``os.fdopen(fd, "wb")`` whose bytes start their write-out as they are written."""
    return WritebackFile(io.FileIO(fd, "wb"))


def available() -> bool:
    """Whether this platform starts write-outs early (else the fsync does all the work)."""
    return _CALL is not None
