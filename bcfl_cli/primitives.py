"""The two checks verify-chain hands to helper processes, importable on their own.

An Ed25519 signature check (PyNaCl) and a blob file's SHA-256 (hashlib, os), with the loop a
helper process runs over batches of them. This module imports nothing of bcfl but
``bcfl_cli.errors``, so that a fresh interpreter starts a helper in ~0.03 CPU-s: a helper
forked from the verifying process instead shared its address space, and every page the
replay then wrote was copied once (~10,000 copy-on-write faults a pass, 0.05-0.15 system-s
on the 2-core machine; bench/README.md, session 9). ``protocol.crypto`` and
``store.blobs`` use these same functions: one implementation of each check.

A helper talks to its caller over one inherited socket in frames (an 8-byte length, then a
``marshal`` of plain values: tuples, lists, bytes, str, int, None). Both ends are processes of
the same verify-chain run; nothing a peer sends is ever unmarshalled here.
"""

from __future__ import annotations

import hashlib
import importlib
import marshal
import os
import re
import stat
from collections.abc import Callable
from functools import lru_cache
from typing import Any, Literal

import nacl.exceptions
import nacl.signing

from bcfl_cli.errors import BlobError

#: Bytes read at a time when hashing a blob file.
CHUNK = 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}\Z")
#: How a blob file is opened: never blocking on a FIFO planted in its place.
OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)

#: What a blob check found: no regular file, content not matching the name, or fine.
BlobStatus = Literal["missing", "corrupt", "ok"]

#: What a helper answers for a batch whose check raised: the caller checks it again itself.
FAILED = "failed"
#: Largest frame a caller reads from a helper (a batch's result is tens of bytes); a longer
#: one ends that helper, and the caller checks its batches itself.
RESULT_FRAME_MAX = 64 * 1024
_HEADER = 8


def is_hash_hex(value: object) -> bool:
    """A SHA-256 as 64 lowercase hex digits, nothing else (no final newline)."""
    return isinstance(value, str) and _HEX64.match(value) is not None


def verify_message(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True when ``signature`` (64 bytes) is a valid Ed25519 signature of ``message``, which
    is already the domain-separated ``signing_message``."""
    if len(signature) != 64:
        return False
    try:
        _verify_key(public_key).verify(message, signature)
    except (ValueError, nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError):
        return False
    return True


@lru_cache(maxsize=4096)
def _verify_key(public_key: bytes) -> nacl.signing.VerifyKey:
    return nacl.signing.VerifyKey(public_key)


def blob_path(root: str, digest: str) -> str:
    """Where blob ``digest`` lives under ``root``; BlobError for anything but a hash."""
    if not is_hash_hex(digest):
        raise BlobError(f"not a blob hash: {digest[:80]!r}")
    return os.path.join(root, digest[:2], digest)


def sha256_fd(digest: str, fd: int) -> tuple[BlobStatus, int]:
    """Whether the open file ``fd`` hashes to ``digest``, with the number of bytes hashed."""
    hasher = hashlib.sha256()
    size = 0
    while chunk := os.read(fd, CHUNK):
        hasher.update(chunk)
        size += len(chunk)
    return ("ok" if hasher.hexdigest() == digest else "corrupt"), size


def check_blob(root: str, digest: str) -> tuple[BlobStatus, int]:
    """Blob ``digest`` under ``root``: a regular file whose SHA-256 is its name, and its size.

    SHA-256'd every time: what ``BlobStore.check(digest, remember=False)`` does (it calls
    this), for a process that reads each blob once. A path that is not a regular file (a
    directory, a FIFO, opened without blocking) is ``missing``.
    """
    try:
        fd = os.open(blob_path(root, digest), OPEN_FLAGS)
    except (FileNotFoundError, NotADirectoryError):
        return "missing", 0
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "missing", 0
        return sha256_fd(digest, fd)
    finally:
        os.close(fd)


#: One check: (public key, signed message, signature) or (None, blob hash, size or None).
Job = tuple[bytes, bytes, bytes] | tuple[None, str, int | None]
#: A batch's answer: signatures checked, blobs checked, and the first failing job if any
#: (its index in the batch, the blob status, the size found).
BatchResult = tuple[int, int, tuple[int, BlobStatus | None, int] | None]


def check_batch(blob_root: str, jobs: list[Job]) -> BatchResult:
    """A batch's checks in order (in a helper or in the caller); stops at the first that
    fails."""
    signatures = checked_blobs = 0
    for index, (key, first, second) in enumerate(jobs):
        if key is None:
            assert isinstance(first, str) and not isinstance(second, bytes)
            status, size = check_blob(blob_root, first)  # read once, then gone
            if status != "ok" or (second is not None and size != second):
                return signatures, checked_blobs, (index, status, size)
            checked_blobs += 1
        else:
            assert isinstance(first, bytes) and isinstance(second, bytes)
            if not verify_message(key, first, second):
                return signatures, checked_blobs, (index, None, 0)
            signatures += 1
    return signatures, checked_blobs, None


# --- frames between a caller and its helper ------------------------------------------------------
def send_frame(fd: int, value: Any) -> None:
    """Write ``value`` (plain values only) as one frame; OSError if the other end is gone."""
    payload = marshal.dumps(value)
    view = memoryview(len(payload).to_bytes(_HEADER, "big") + payload)
    while view:
        view = view[os.write(fd, view) :]


def recv_frame(fd: int, limit: int | None = None) -> Any:
    """The next frame's value; EOFError if the other end closed (or broke off mid-frame),
    ValueError if the frame is longer than ``limit``."""
    size = int.from_bytes(_read_exactly(fd, _HEADER), "big")
    if limit is not None and size > limit:
        raise ValueError(f"frame of {size} bytes, more than {limit}")
    return marshal.loads(_read_exactly(fd, size))  # noqa: S302 (our own processes only)


def _read_exactly(fd: int, size: int) -> bytes:
    parts: list[bytes] = []
    left = size
    while left:
        part = os.read(fd, min(left, 1 << 20))
        if not part:
            raise EOFError("the other end closed")
        parts.append(part)
        left -= len(part)
    return b"".join(parts)


def serve(fd: int, target: str, arg: str) -> None:
    """A helper: run ``target`` (``module:function``) on each batch received on ``fd`` and
    answer with its result, until the caller says stop (``None``) or is gone. A check that
    raises is answered :data:`FAILED`: the caller runs it again, and raises what it raises."""
    module, _, name = target.partition(":")
    check: Callable[[str, Any], Any] = getattr(importlib.import_module(module), name)
    while True:
        try:
            jobs = recv_frame(fd)
        except (EOFError, OSError):
            return
        if jobs is None:
            return
        try:
            result: Any = check(arg, jobs)
        except Exception:
            result = FAILED
        try:
            send_frame(fd, result)
        except OSError:
            return
