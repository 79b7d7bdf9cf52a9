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
import sys
from collections.abc import Callable

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


def available() -> bool:
    """Whether this platform starts write-outs early (else the fsync does all the work)."""
    return _CALL is not None
