"""What this process knows of the blobs whose SHA-256 it established: a fast re-check of each.

A round's aggregate re-reads its inputs (the base model, every accepted update) to make sure a
local copy did not change after it arrived: before this record, every node SHA-256'd each input
again before its streamed pass, 0.84 CPU-s a node at 110M parameters (three 440 MB files),
nearly half of the aggregate's CPU (bench/README.md, issue 19). Yet this process had computed
that very SHA-256 seconds earlier, over the bytes as it wrote them.

So when the store takes a blob in under a SHA-256 it computed or checked (``adopt``,
``put_stream``, a full re-hash), it notes here the file's identity (device, inode, size, status
change time) and an XXH3-128 of its content. A later reader asks ``unchanged``:

- the identity differs (the file was replaced, touched, written to: any write moves the status
  change time, which no unprivileged process can set back) or nothing is noted (another process
  stored it, this one restarted, the entry was evicted): ``None``, and the caller hashes with
  SHA-256 as before;
- the identity is the same: every byte is read again through the caller's descriptor and its
  XXH3-128 compared (0.03 s for 440 MB against SHA-256's 0.30 s): a copy changed below the file
  system (a bad disk, a write that left the status change time alone) is ``False``, corrupt.

XXH3 is no cryptographic hash, and it need not be here: the bytes were bound to their name by
SHA-256 when they were noted, and the record lives in this process's memory; an attacker able
to rewrite a node's blob files in place and keep their status change time owns that node (its
key file and its ledger are in the same home) and can at most make it compute a wrong aggregate
itself, which its peers outvote. verify-chain's pass over a long chain (its helpers and the
replaying process) re-hashes every blob with SHA-256 and neither asks nor fills this record
(``BlobStore.check(remember=False)``).

Bounded: the last ``MAX_RECORDED_BLOBS`` blobs, about 200 bytes each.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import xxhash

#: Blobs whose content this process remembers (the oldest forgotten first): a few rounds of
#: updates and models; a forgotten one is hashed with SHA-256 again, never trusted.
MAX_RECORDED_BLOBS = 1024
#: Bytes read per step when a record is taken or checked.
READ_SIZE = 1 << 20


@dataclass(frozen=True)
class Identity:
    """What changes when a file is replaced or written to through the file system."""

    device: int
    inode: int
    size: int
    changed_ns: int

    @classmethod
    def of(cls, fd: int) -> Identity:
        info = os.fstat(fd)
        return cls(info.st_dev, info.st_ino, info.st_size, info.st_ctime_ns)


#: The content sum's hasher (``update``, ``hexdigest``): XXH3-128, ~15 GB/s a core.
new_content_sum: Callable[[], xxhash.xxh3_128] = xxhash.xxh3_128


def content_sum(fd: int, size: int) -> str:
    """XXH3-128 of the first ``size`` bytes of ``fd``, read with ``pread`` (the file's
    position is left alone). ValueError when the file is shorter."""
    hasher = new_content_sum()
    buffer = bytearray(min(READ_SIZE, size))
    view = memoryview(buffer)
    offset = 0
    while offset < size:
        count = os.preadv(fd, [view[: min(READ_SIZE, size - offset)]], offset)
        if count <= 0:
            raise ValueError(f"the file ended at byte {offset}, {size} expected")
        hasher.update(view[:count])
        offset += count
    return hasher.hexdigest()


class ContentRecord:
    """Blob hash -> (file identity, XXH3-128 of its content), for blobs whose SHA-256 this
    process established; thread-safe (uploads adopt on a thread pool, checks on the worker)."""

    def __init__(self, capacity: int = MAX_RECORDED_BLOBS) -> None:
        self._capacity = capacity
        self._entries: OrderedDict[str, tuple[Identity, str]] = OrderedDict()
        self._lock = threading.Lock()

    def note(self, digest: str, fd: int, summed: str) -> None:
        """Note the file open as ``fd`` as blob ``digest``, where ``summed`` is the XXH3-128
        of the very bytes this process found to hash to ``digest`` (as they were written or
        read, never read back after): a later change of the file, before or after this
        call, either moves its identity (SHA-256 again) or is found by the sum (corrupt)."""
        identity = Identity.of(fd)
        with self._lock:
            self._entries[digest] = (identity, summed)
            self._entries.move_to_end(digest)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)

    def unchanged(self, digest: str, fd: int) -> bool | None:
        """Whether the file open as ``fd`` still holds what hashed to ``digest``: True or
        False when noted and its identity is the same (its content summed again), None when
        this process cannot tell without SHA-256."""
        with self._lock:
            entry = self._entries.get(digest)
        if entry is None:
            return None
        identity, summed = entry
        if Identity.of(fd) != identity:
            return None
        try:
            return content_sum(fd, identity.size) == summed
        except (OSError, ValueError):
            return False

    def forget(self, digest: str) -> None:
        with self._lock:
            self._entries.pop(digest, None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)


__all__ = ["MAX_RECORDED_BLOBS", "ContentRecord", "Identity", "content_sum", "new_content_sum"]
