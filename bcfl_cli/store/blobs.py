"""Content-addressed blob store: model tensors and updates as files named by their SHA-256.

Names are never taken from input, only from a validated hash; writes go to a temp file and are
renamed into place, so a crash leaves either the whole blob or nothing; every read is checked
against the hash, so a corrupted or swapped file is never served or used.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from bcfl_cli.errors import BlobError
from bcfl_cli.primitives import CHUNK, OPEN_FLAGS, BlobStatus, blob_path, check_blob
from bcfl_cli.protocol.encoding import is_hash_hex
from bcfl_cli.store.content_record import ContentRecord, new_content_sum

DEFAULT_MAX_BLOB_BYTES = 2 * 1024 * 1024 * 1024


def _hash_file(f: BinaryIO, max_bytes: int) -> tuple[str, str]:
    """The SHA-256 and the content sum (store/content_record.py) of an open file read
    ``CHUNK`` at a time; BlobError past ``max_bytes``."""
    hasher = hashlib.sha256()
    summer = new_content_sum()
    size = 0
    while chunk := f.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise BlobError(f"blob larger than the limit of {max_bytes} bytes")
        hasher.update(chunk)
        summer.update(chunk)
    return hasher.hexdigest(), summer.hexdigest()


class BlobStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._root_text = str(self.root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)
        #: the blobs this process stored under a SHA-256 it computed, re-checked cheaply
        #: (``unchanged``; store/content_record.py)
        self.record = ContentRecord()

    def unchanged(self, digest: str, fd: int) -> bool | None:
        """Whether blob ``digest``, open as ``fd``, still holds the bytes this process found
        to hash to its name (its content summed again, XXH3-128): None when it cannot tell
        (stored by another process, replaced or touched since), and the caller hashes it."""
        return self.record.unchanged(digest, fd)

    def note_checked(self, digest: str, fd: int, summed: str) -> None:
        """Note that blob ``digest``, open as ``fd``, was just found to hash to its name, and
        ``summed``, the content sum of the bytes so hashed."""
        self.record.note(digest, fd, summed)

    def check(self, digest: str, *, remember: bool = True) -> tuple[BlobStatus, int]:
        """Whether a blob is present and hashes to its name, with its size in bytes.

        One open, one fstat and a streamed hash: what :meth:`has`, :meth:`verify` and
        :meth:`size` find together, for verify-chain's thousands of blobs. The size is the
        number of bytes hashed. A path that is not a regular file (a directory, a FIFO, which
        is opened without blocking) is ``missing``, as for :meth:`has`. A blob this store
        took in (or checked) under its SHA-256 and the same file since is re-checked from
        :attr:`record` (an XXH3-128 of its bytes, a tenth of the CPU: a trainer checks its
        round's base model, its last aggregate, before every round); any other is hashed,
        and noted when it hashes to its name. ``remember=False`` (verify-chain's pass, which
        reads each blob once in a process that ends after it) hashes with SHA-256 alone and
        neither consults nor notes the record: an XXH3 and an fstat a blob for nothing.
        """
        if not remember:
            return check_blob(self._root_text, digest)
        try:
            fd = os.open(blob_path(self._root_text, digest), OPEN_FLAGS)
        except (FileNotFoundError, NotADirectoryError):
            return "missing", 0
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                return "missing", 0
            known = self.record.unchanged(digest, fd)
            if known is not None:  # stored here under its SHA-256 and the same file since
                return ("ok" if known else "corrupt"), info.st_size
            hasher = hashlib.sha256()
            summer = new_content_sum()
            size = 0
            while chunk := os.read(fd, CHUNK):
                hasher.update(chunk)
                summer.update(chunk)
                size += len(chunk)
            ok = hasher.hexdigest() == digest
            if ok:
                self.record.note(digest, fd, summer.hexdigest())
        finally:
            os.close(fd)
        return ("ok" if ok else "corrupt"), size

    def path_for(self, digest: str) -> Path:
        return Path(blob_path(self._root_text, digest))

    def has(self, digest: str) -> bool:
        return self.path_for(digest).is_file()

    def size(self, digest: str) -> int:
        path = self.path_for(digest)
        if not path.is_file():
            raise BlobError(f"blob {digest} is missing", hint="fetch it from a peer (bcfl node)")
        return path.stat().st_size

    def put(self, data: bytes) -> str:
        """Store bytes; returns their hash. Idempotent."""
        return self.put_stream([data])

    def put_stream(
        self,
        chunks: Iterable[bytes],
        *,
        expected: str | None = None,
        max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
    ) -> str:
        """Stream chunks to disk, hashing as they come; refuse more than ``max_bytes``.

        With ``expected``, the blob is kept only if its hash matches (nothing is left otherwise).
        """
        if expected is not None:
            self.path_for(expected)  # validates the name before any write
        hasher = hashlib.sha256()
        summer = new_content_sum()
        size = 0
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp, prefix="in-")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > max_bytes:
                        raise BlobError(f"blob larger than the limit of {max_bytes} bytes")
                    hasher.update(chunk)
                    summer.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
                digest = hasher.hexdigest()
                if expected is not None and digest != expected:
                    raise BlobError(f"blob hash mismatch: expected {expected}, got {digest}")
                final = self.path_for(digest)
                final.parent.mkdir(exist_ok=True)
                os.replace(tmp, final)
                self.record.note(digest, out.fileno(), summer.hexdigest())
            return digest
        finally:
            tmp.unlink(missing_ok=True)

    def adopt(
        self,
        part: Path,
        *,
        expected: str,
        max_bytes: int = DEFAULT_MAX_BLOB_BYTES,
        known_digest: str | None = None,
        known_sum: str | None = None,
    ) -> str:
        """Move a finished partial file of this store (``tmp/``) into place, without copying it.

        The file is kept only if it has at most ``max_bytes`` and hashes to ``expected``, and
        removed otherwise (BlobError); it is fsynced before the rename either way. A
        multi-chunk upload or download of a 440 MB update is renamed, not written twice.

        ``known_digest``: the SHA-256 this process computed over exactly the bytes it wrote
        into ``part`` (an upload hashed chunk by chunk as it was appended, an update or an
        aggregate hashed while written). The file is then not read again: hashing a 440 MB
        update a second time cost ~0.3 s of a core on every node, for every update (issue 19).
        ``known_sum``: the content sum of those same bytes (store/content_record.py), noted so
        that a reader of this process re-checks the file cheaply (``unchanged``); without it
        (and with ``known_digest``) nothing is noted and a reader hashes with SHA-256.
        """
        final = self.path_for(expected)  # validates the name before anything else
        if part.parent.resolve() != self._tmp.resolve():
            raise BlobError(f"{part} is not a partial file of this blob store")
        try:
            with open(part, "r+b") as f:
                summed = known_sum
                if known_digest is None:
                    digest, summed = _hash_file(f, max_bytes)
                else:
                    digest = known_digest
                    if os.fstat(f.fileno()).st_size > max_bytes:
                        raise BlobError(f"blob larger than the limit of {max_bytes} bytes")
                if digest != expected:
                    raise BlobError(f"blob hash mismatch: expected {expected}, got {digest}")
                os.fsync(f.fileno())
                final.parent.mkdir(exist_ok=True)
                os.replace(part, final)
                if summed is not None:  # after the rename, which moves the change time
                    self.record.note(expected, f.fileno(), summed)
        finally:
            part.unlink(missing_ok=True)
        return expected

    def put_file(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> str:
        with open(path, "rb") as f:
            return self.put_stream(iter(lambda: f.read(CHUNK), b""), max_bytes=max_bytes)

    def get(self, digest: str, *, max_bytes: int = DEFAULT_MAX_BLOB_BYTES) -> bytes:
        """Read a whole blob, verified against its hash."""
        path = self.path_for(digest)
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BlobError(f"blob {digest} is missing", hint="fetch it from a peer") from None
        if size > max_bytes:
            raise BlobError(f"blob {digest} has {size} bytes, over the limit of {max_bytes}")
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            raise BlobError(f"blob {digest} is corrupt: its content does not match its name")
        return data

    def verify(self, digest: str) -> bool:
        """True when the blob exists and its content hashes to its name (streamed)."""
        path = self.path_for(digest)
        if not path.is_file():
            return False
        hasher = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(CHUNK), b""):
                hasher.update(chunk)
        return hasher.hexdigest() == digest

    @contextmanager
    def open(self, digest: str) -> Iterator[BinaryIO]:
        """Open a blob for streaming reads (e.g. serving it in chunks); caller checks hashes."""
        path = self.path_for(digest)
        if not path.is_file():
            raise BlobError(f"blob {digest} is missing")
        with open(path, "rb") as f:
            yield f

    def touch(self, digest: str) -> None:
        """Mark a blob as wanted now (its mtime): a retention period counts from here."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path_for(digest))

    def remove(self, digest: str) -> int:
        """Delete a blob; the bytes freed (0 if it was not there)."""
        path = self.path_for(digest)
        self.record.forget(digest)
        try:
            size = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            return 0
        return size

    def hashes_under(self, prefix: str) -> list[tuple[str, int, float]]:
        """(hash, size, mtime) of the blobs whose hash starts with the two hex ``prefix``."""
        if len(prefix) != 2 or any(c not in "0123456789abcdef" for c in prefix):
            raise BlobError(f"not a blob prefix: {prefix[:8]!r}")
        found: list[tuple[str, int, float]] = []
        try:
            entries = list(os.scandir(self.root / prefix))
        except (FileNotFoundError, NotADirectoryError):
            return found
        for entry in entries:
            if not is_hash_hex(entry.name) or not entry.name.startswith(prefix):
                continue
            try:
                info = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISREG(info.st_mode):
                found.append((entry.name, info.st_size, info.st_mtime))
        return found

    def iter_hashes(self) -> Iterator[str]:
        for sub in sorted(self.root.iterdir()):
            if sub.is_dir() and len(sub.name) == 2:
                for f in sorted(sub.iterdir()):
                    if is_hash_hex(f.name):
                        yield f.name
