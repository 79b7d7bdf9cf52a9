"""A round's aggregate computed from blob files into a blob file: bounded memory, any model size.

The proposer (``training.rounds.compute_aggregate``) and every validator
(``fl.checks.FLChecks.check_aggregate``) recompute the same aggregate from the same blobs. Here
the base model, the genesis model and the updates are opened as files, read one tensor slice at
a time (``fl.aggregation.stream``), and the new model is written to a temporary file in the
store, hashed while written, and renamed to its hash when it is wanted. Nothing holds a whole
model: memory is a few slices per update, whatever the model's size or the number of members.

Each input is hashed (streamed) before it is used, as ``BlobStore.get`` did, so a corrupted
copy is a ``BlobError``, never a wrong aggregate; its safetensors header is checked as the
contract checks an update's (``tensors.check_safetensors_layout``, on the header alone).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import mmap
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, cast

import torch

from bcfl_cli.errors import BlobError, ContractError
from bcfl_cli.fl.aggregation import StreamedAggregate, UpdateInput, aggregate_to
from bcfl_cli.fl.tensors import check_safetensors_layout
from bcfl_cli.fl.tensorwriter import DTYPE_ORDER
from bcfl_cli.fl.views import Blobs
from bcfl_cli.protocol.spec import AggregationSpec

_DTYPES = {name: dtype for dtype, name in DTYPE_ORDER.items()}
_HASH_CHUNK = 1 << 20


class BlobFiles(Blobs, Protocol):
    """A blob store whose blobs are files (``store.blobs.BlobStore``)."""

    root: Path

    def path_for(self, digest: str) -> Path: ...


class BlobTensors(Mapping[str, torch.Tensor]):
    """A safetensors blob on disk, read one tensor (or one slice of one) at a time.

    A ``Mapping`` (sorted names, one tensor materialised per access) and a
    ``stream.SliceReader``. The layout is checked from the header alone before anything is
    read; reads are ``pread`` into fresh buffers (no memory map whose pages would stay
    resident). Close it (``with``) to release the file.
    """

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self._fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            size = os.fstat(self._fd).st_size
            if size > max_bytes:
                raise ContractError("blob_too_large", f"{size} bytes exceeds the {max_bytes} limit")
            if size < 8:
                raise ContractError("malformed_blob", "shorter than a safetensors header")
            with mmap.mmap(self._fd, 0, access=mmap.ACCESS_READ) as view:
                # Only the header's pages are touched: the check slices [:8] and the header.
                layout = check_safetensors_layout(cast(bytes, view), max_bytes=max_bytes)
                header_len = int.from_bytes(view[:8], "little")
                offsets = _offsets(bytes(view[8 : 8 + header_len]))
        except BaseException:
            os.close(self._fd)
            raise
        self._data = 8 + header_len
        self.layout = {name: (dtype, tuple(shape)) for name, (dtype, shape) in layout.items()}
        self._offsets = offsets

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> BlobTensors:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def shape_of(self, name: str) -> tuple[int, ...]:
        return self.layout[name][1]

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        """Elements ``start:stop`` of tensor ``name`` (row-major), in its own dtype."""
        dtype = _DTYPES[self.layout[name][0]]
        item = torch.empty((), dtype=dtype).element_size()
        buffer = torch.empty((stop - start) * item, dtype=torch.uint8)
        view = buffer.numpy().data
        offset = self._data + self._offsets[name] + start * item
        done = 0
        while done < len(view):
            got = os.preadv(self._fd, [view[done:]], offset + done)
            if got <= 0:
                raise BlobError("a blob file ended early: it changed while read")
            done += got
        return buffer.view(dtype)

    def __getitem__(self, name: str) -> torch.Tensor:
        shape = self.layout[name][1]
        count = 1
        for d in shape:
            count *= d
        return self.read_flat(name, 0, count).reshape(shape)

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.layout))

    def __len__(self) -> int:
        return len(self.layout)


def _offsets(header: bytes) -> dict[str, int]:
    """Where each tensor's data starts (a header ``check_safetensors_layout`` accepted)."""
    parsed = json.loads(header.decode("utf-8"))
    return {k: int(v["data_offsets"][0]) for k, v in parsed.items() if k != "__metadata__"}


def verified_path(blobs: BlobFiles, digest: str, *, max_bytes: int) -> Path:
    """The file of blob ``digest`` once its content hashes to its name (streamed)."""
    path = blobs.path_for(digest)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BlobError(f"blob {digest} is missing", hint="fetch it from a peer") from None
    if size > max_bytes:
        raise BlobError(f"blob {digest} has {size} bytes, over the limit of {max_bytes}")
    hasher = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            hasher.update(chunk)
    if hasher.hexdigest() != digest:
        raise BlobError(f"blob {digest} is corrupt: its content does not match its name")
    return path


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
    path. The file is removed on exit unless the caller moved it (``keep_as_blob``).

    ``paths``: files for models that the store may not hold (a verifier's recomputed models).
    """
    known = paths or {}

    def open_blob(digest: str) -> BlobTensors:
        path = known.get(digest) or verified_path(blobs, digest, max_bytes=max_bytes)
        return BlobTensors(path, max_bytes=max_bytes)

    tmp_dir = blobs.root / "tmp"
    tmp_dir.mkdir(exist_ok=True)
    with contextlib.ExitStack() as stack:
        base = stack.enter_context(open_blob(inputs.base))
        updates = [
            UpdateInput(tx, stack.enter_context(open_blob(blob)), n)
            for tx, blob, n in inputs.updates
        ]
        initial = None if inputs.initial is None else stack.enter_context(open_blob(inputs.initial))
        fd, name = tempfile.mkstemp(dir=tmp_dir, prefix="aggregate-")
        tmp = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                result = aggregate_to(out, spec, base, updates, initial_state=initial)
                out.flush()
                os.fsync(out.fileno())
            stack.close()  # the inputs are no longer needed
            yield result, tmp
        finally:
            tmp.unlink(missing_ok=True)


def keep_as_blob(blobs: BlobFiles, tmp: Path, digest: str) -> None:
    """Move a written (and fsynced) aggregate file into the store under its hash."""
    final = blobs.path_for(digest)
    if final.is_file():
        return
    final.parent.mkdir(exist_ok=True)
    os.replace(tmp, final)


__all__ = [
    "BlobFiles",
    "BlobTensors",
    "RoundBlobs",
    "aggregate_file",
    "keep_as_blob",
    "verified_path",
]
