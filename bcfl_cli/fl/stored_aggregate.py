"""A round's aggregate computed from blob files into a blob file: bounded memory, any model size.

The proposer (``training.rounds.compute_aggregate``) and every validator
(``fl.checks.FLChecks.check_aggregate``) recompute the same aggregate from the same blobs. Here
the base model, the genesis model and the updates are opened as files, read one tensor slice at
a time (``fl.aggregation.stream``), and the new model is written to a temporary file in the
store, hashed while written, and renamed to its hash when it is wanted. Nothing holds a whole
model: memory is a few slices per update, whatever the model's size or the number of members.

Each input is opened as the contract opens an update (``tensorfile.TensorFile``: the header
checked alone, then ``pread`` into buffers of ours) and checked before it is used, as
``BlobStore.get`` did, so a corrupted copy is a ``BlobError``, never a wrong aggregate: hashed
with SHA-256, or, where the store took the blob in under a SHA-256 this process computed and
the file is the same one since (``store.content_record``), its content summed again with
XXH3-128 (a tenth of the CPU; issue 19).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import xxhash

from bcfl_cli.errors import BlobError
from bcfl_cli.fl.aggregation import StreamedAggregate, UpdateInput, aggregate_to
from bcfl_cli.fl.tensorfile import (
    TORCH_DTYPES,
    FileSource,
    LazyTensors,
    TensorFile,
    feed_hashers,
    sha256_of,
)
from bcfl_cli.fl.tensors import DTYPE_SIZES, ByteSource
from bcfl_cli.fl.views import Blobs
from bcfl_cli.protocol.spec import AggregationSpec


class BlobFiles(Blobs, Protocol):
    """A blob store whose blobs are files (``store.blobs.BlobStore``), with a folder to write
    a new blob into before it is renamed to its hash (``root / "tmp"``, as the store does)."""

    root: Path

    def adopt(
        self,
        part: Path,
        *,
        expected: str,
        max_bytes: int = ...,
        known_digest: str | None = None,
        known_sum: str | None = None,
    ) -> str:
        """Rename a finished file of ``root / "tmp"`` into the store (``BlobStore.adopt``)."""
        ...


@runtime_checkable
class RecordedBlobs(Protocol):
    """A blob store that remembers the content of the blobs whose SHA-256 this process
    established (``store.blobs.BlobStore``), so a reader re-checks them without SHA-256."""

    def unchanged(self, digest: str, fd: int) -> bool | None:
        """True or False: the file open as ``fd`` holds, or no longer holds, what hashed to
        ``digest``; None: cannot tell without hashing it."""
        ...

    def note_checked(self, digest: str, fd: int, summed: str) -> None:
        """Note that the file open as ``fd`` was just found to hash to ``digest``, and
        ``summed``, the XXH3-128 of the bytes so hashed."""
        ...


class FileTensors(LazyTensors):
    """An opened blob (``tensorfile.TensorFile``) as the aggregation reads it: a lazily loaded
    ``Mapping`` that also reads a slice of a tensor (a ``stream.SliceReader``), so a tensor
    larger than everything else costs a slice per update, not the whole tensor."""

    def __init__(self, file: TensorFile) -> None:
        super().__init__(file)
        self.file = file

    def changed(self) -> bool:
        """Whether the file changed (size, time or inode) since it was opened."""
        changed = getattr(self.file.source, "changed", None)
        return bool(changed()) if callable(changed) else False

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self.file.header.entries[name].shape)

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements ``start:stop`` of tensor ``name`` (row-major), in its own dtype."""
        entry = self.file.header.entries[name]
        width = DTYPE_SIZES[entry.dtype]
        buffer = torch.empty((stop - start) * width, dtype=torch.uint8)
        if stop > start:
            self.file.source.read_into(entry.start + start * width, buffer.numpy().data)
        return buffer.view(TORCH_DTYPES[entry.dtype])


@contextlib.contextmanager
def open_blob(
    blobs: BlobFiles, digest: str, *, max_bytes: int, path: Path | None = None
) -> Iterator[FileTensors]:
    """Blob ``digest`` opened for reading, once its content hashes to its name (read through
    the same descriptor, so what is read later is what was hashed), as ``BlobStore.get`` did:
    a corrupt copy is a ``BlobError``, never a wrong aggregate. ``path``: a file of ours (a
    recomputed model), used as it is."""
    try:
        file = TensorFile.open(path or blobs.path_for(digest), max_bytes=max_bytes)
    except FileNotFoundError:
        raise BlobError(f"blob {digest} is missing", hint="fetch it from a peer") from None
    with file:
        if path is None and not _content_matches(blobs, digest, file.source):
            raise BlobError(f"blob {digest} is corrupt: its content does not match its name")
        yield FileTensors(file)


def _content_matches(blobs: BlobFiles, digest: str, source: ByteSource) -> bool:
    """Whether ``source`` holds blob ``digest``: from the store's record of it when it has one
    for this very file, else by SHA-256 (then noted, so the next round's reader has it)."""
    if not isinstance(blobs, RecordedBlobs) or not isinstance(source, FileSource):
        return sha256_of(source) == digest
    fd = source.fileno()
    known = blobs.unchanged(digest, fd)
    if known is not None:
        return known
    hashed, summed = sha256_and_sum(source)
    if hashed != digest:
        return False
    blobs.note_checked(digest, fd, summed)
    return True


def sha256_and_sum(source: ByteSource) -> tuple[str, str]:
    """SHA-256 and XXH3-128 (``store.content_record``'s content sum) of every byte of
    ``source``, in one read."""
    hasher, summer = hashlib.sha256(), xxhash.xxh3_128()
    feed_hashers(source, hasher, summer)
    return hasher.hexdigest(), summer.hexdigest()


@dataclass(frozen=True)
class RoundBlobs:
    """A round's inputs by blob hash: the base model, the updates, maybe the genesis model."""

    base: str
    updates: Sequence[tuple[str, str, int]]  # (update tx hash, blob hash, num_samples)
    initial: str | None = None


@contextlib.contextmanager
def aggregate_file(
    blobs: BlobFiles,
    spec: AggregationSpec,
    inputs: RoundBlobs,
    *,
    max_bytes: int,
    paths: Mapping[str, Path] | None = None,
) -> Iterator[tuple[StreamedAggregate, Path]]:
    """Stream the round's aggregate into a temporary file in the store; yields it and its
    path. The file is removed on exit unless the caller moved it (``keep_as_blob``, which
    syncs it first: a file that is compared and dropped, or only held as a verifier's next
    base, needs no fsync, which cost ~10 ms an aggregate, a third of ``verify-chain --deep``
    on a loaded disk).

    ``paths``: files for models that the store may not hold (a verifier's recomputed models).
    """
    known = paths or {}
    files: list[tuple[str, FileTensors]] = []

    def opened(digest: str) -> FileTensors:
        file = stack.enter_context(
            open_blob(blobs, digest, max_bytes=max_bytes, path=known.get(digest))
        )
        files.append((digest, file))
        return file

    tmp_dir = blobs.root / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        base = opened(inputs.base)
        updates = [UpdateInput(tx, opened(blob), n) for tx, blob, n in inputs.updates]
        initial = None if inputs.initial is None else opened(inputs.initial)
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="aggregate-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                result = aggregate_to(out, spec, base, updates, initial_state=initial)
            for digest, file in files:
                # A copy rewritten while read gives a model no peer computed: the node's
                # fault (a BlobError), never an aggregate_mismatch blamed on the proposer.
                if file.changed():
                    raise BlobError(f"blob {digest} changed while the aggregate read it")
            stack.close()  # the inputs are no longer needed
            yield result, tmp
        finally:
            tmp.unlink(missing_ok=True)


def keep_as_blob(blobs: BlobFiles, tmp: Path, digest: str, content_sum: str = "") -> None:
    """Move a written aggregate file into the store under its hash, synced first (a blob the
    store names must survive a crash, as ``BlobStore.put`` makes sure).

    The store's own ``adopt``, told the hash ``aggregate_to`` computed while writing the file:
    one path for every finished file of ``tmp/``, and no second read of a model that size.
    """
    if blobs.has(digest):
        return
    blobs.adopt(
        tmp,
        expected=digest,
        max_bytes=tmp.stat().st_size,
        known_digest=digest,
        known_sum=content_sum or None,
    )


__all__ = [
    "BlobFiles",
    "FileTensors",
    "RecordedBlobs",
    "RoundBlobs",
    "aggregate_file",
    "keep_as_blob",
    "open_blob",
]
