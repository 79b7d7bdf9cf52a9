"""A safetensors blob read tensor by tensor: an update is checked without holding it whole.

``TensorFile`` validates the header with the same code as ``tensors.check_safetensors_layout``
(reading only the 8-byte length and the header, bounded the same way), adds the checks the
safetensors loader makes on top (tensor data contiguous from the first byte and covering the
rest of the file, names that are valid UTF-8), and then reads one tensor, or one bounded piece
of a tensor, at a time. ``LazyTensors`` is the same file as a read-only
``Mapping[str, torch.Tensor]`` in sorted name order: whoever iterates it holds one tensor.

Files are read with ``pread`` into buffers we own, not memory-mapped: a file truncated under a
map kills the process with ``SIGBUS``, while a short read here is a ``ContractError``; and pages
touched through a map count in the process's RSS until the kernel drops them, while the page
cache behind ``pread`` does not. Measured by bench/contract_memory.py (peak RSS above a warm
process, checking a 64 MB / 440 MB update): all read and decoded, 203 / 1,079 MB; through
``safe_open``'s map a tensor at a time, 142 / 478 MB; read here a piece at a time, 0.1 / 0 MB.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Protocol

import numpy as np
import torch

from bcfl_cli.errors import ContractError
from bcfl_cli.fl.tensors import (
    DTYPE_SIZES,
    ByteSource,
    BytesSource,
    Header,
    TensorEntry,
    read_header,
)

#: Bytes read per step when hashing a blob (and the largest buffer hashing needs).
HASH_CHUNK = 1 << 20
#: Elements per piece when a tensor is read piece by piece (256 KiB of float32): the contract's
#: working set is a few times a piece (float64 copies, the exact sum's integer temporaries).
PIECE_ELEMENTS = 1 << 16

TORCH_DTYPES: dict[str, torch.dtype] = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


_NUMPY_DTYPES: dict[str, str] = {
    "F64": "<f8",
    "F32": "<f4",
    "F16": "<f2",
    "BF16": "<u2",
    "I64": "<i8",
    "I32": "<i4",
    "I16": "<i2",
    "I8": "i1",
    "U8": "u1",
}


class FileSource:
    """A file opened once and read with ``pread``; notices a file that changes under it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        # O_NONBLOCK: opening a FIFO put where a blob should be must not hang the reader
        flags = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NONBLOCK", 0)
        self._fd = os.open(path, flags)
        if not stat.S_ISREG(os.fstat(self._fd).st_mode):
            self.close()
            raise ContractError("malformed_blob", f"{path.name} is not a regular file")
        self._stamp = self._stat()
        self._size = self._stamp[0]

    def _stat(self) -> tuple[int, int, int]:
        info = os.fstat(self._fd)
        return info.st_size, info.st_mtime_ns, info.st_ino

    @property
    def size(self) -> int:
        return self._size

    def fileno(self) -> int:
        """The descriptor every read goes through (a content check reads the same file)."""
        return self._fd

    def changed(self) -> bool:
        """True when the file's size or modification time differ from when it was opened."""
        return self._stat() != self._stamp

    def read_into(self, offset: int, buffer: memoryview) -> None:
        done = 0
        while done < buffer.nbytes:
            count = os.preadv(self._fd, [buffer[done:]], offset + done)
            if count <= 0:
                raise ContractError(
                    "malformed_blob",
                    f"the file ended at byte {offset + done}, {self._size} expected: "
                    "it changed while it was read",
                )
            done += count

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:  # a file left open by a caller still gives its descriptor back
        if getattr(self, "_fd", -1) >= 0:
            self.close()


class Hasher(Protocol):
    """What :func:`feed_hashers` needs of a hash object (hashlib's, xxhash's)."""

    def update(self, data: memoryview, /) -> None: ...


def feed_hashers(source: ByteSource, *hashers: Hasher) -> None:
    """Every byte of ``source`` to each of ``hashers``, read ``HASH_CHUNK`` at a time into
    one buffer: several sums of a file in one read of it."""
    buffer = bytearray(min(HASH_CHUNK, source.size))
    view = memoryview(buffer)
    for offset in range(0, source.size, HASH_CHUNK):
        piece = view[: min(HASH_CHUNK, source.size - offset)]
        source.read_into(offset, piece)
        for hasher in hashers:
            hasher.update(piece)


def sha256_of(source: ByteSource) -> str:
    """SHA-256 of every byte of ``source``, read ``HASH_CHUNK`` at a time into one buffer."""
    digest = hashlib.sha256()
    feed_hashers(source, digest)
    return digest.hexdigest()


class TensorFile:
    """A validated safetensors blob whose tensors are read one at a time, never all at once."""

    def __init__(self, source: ByteSource, *, max_bytes: int) -> None:
        self.source = source
        self.header: Header = read_header(source, max_bytes=max_bytes)
        _check_like_the_loader(self.header)
        self.names: tuple[str, ...] = tuple(sorted(self.header.entries))

    @classmethod
    def open(cls, path: Path, *, max_bytes: int) -> TensorFile:
        """Open and validate ``path``; OSError when it cannot be opened, else ContractError."""
        source = FileSource(path)
        try:
            return cls(source, max_bytes=max_bytes)
        except BaseException:
            source.close()
            raise

    @classmethod
    def of_bytes(cls, data: bytes, *, max_bytes: int) -> TensorFile:
        return cls(BytesSource(data), max_bytes=max_bytes)

    @property
    def layout(self) -> dict[str, tuple[str, list[int]]]:
        return self.header.layout

    def tensor(self, name: str) -> torch.Tensor:
        """Tensor ``name``, read into memory of its own (one copy, nothing else kept)."""
        entry = self.header.entries[name]
        return self._read(entry, entry.start, entry.elements).reshape(entry.shape)

    def read_tensor_into(self, name: str, out: torch.Tensor) -> bool:
        """Tensor ``name`` read straight into the memory of ``out``, a contiguous CPU tensor
        of its dtype and element count (a model's weight being loaded: no buffer of its own
        is allocated, zeroed and copied); False, nothing read, where ``out`` is not one."""
        entry = self.header.entries[name]
        if (
            out.dtype != TORCH_DTYPES[entry.dtype]
            or out.device.type != "cpu"
            or not out.is_contiguous()
            or out.numel() != entry.elements
            or out.requires_grad
            or entry.elements == 0
        ):
            return False
        # safetensors is little-endian, as is every host torch ships for (as ``_read``)
        array: np.ndarray = out.numpy()
        self.source.read_into(entry.start, memoryview(array.data).cast("B"))
        return True

    def pieces(self, name: str, elements: int = PIECE_ELEMENTS) -> Iterator[torch.Tensor]:
        """Tensor ``name`` flattened, ``elements`` at a time (row-major order)."""
        entry = self.header.entries[name]
        width = DTYPE_SIZES[entry.dtype]
        for first in range(0, entry.elements, elements):
            count = min(elements, entry.elements - first)
            yield self._read(entry, entry.start + first * width, count)

    def float64_pieces(self, name: str, elements: int = PIECE_ELEMENTS) -> Iterator[np.ndarray]:
        """Tensor ``name`` flattened, ``elements`` at a time, widened to float64 (exactly).

        NumPy, not torch: a torch conversion of a small piece costs ~30 ms on a loaded machine
        (its thread pool), 20x the rest of the contract's work on it.
        """
        entry = self.header.entries[name]
        width = DTYPE_SIZES[entry.dtype]
        for first in range(0, entry.elements, elements):
            count = min(elements, entry.elements - first)
            yield self._read_float64(entry, entry.start + first * width, count)

    def _read_float64(self, entry: TensorEntry, offset: int, count: int) -> np.ndarray:
        if entry.dtype not in _NUMPY_DTYPES:  # BOOL: as torch converts it
            flat = self._read(entry, offset, count)
            return flat.to(torch.float64).numpy()
        buffer = bytearray(count * DTYPE_SIZES[entry.dtype])
        self.source.read_into(offset, memoryview(buffer))
        raw = np.frombuffer(buffer, dtype=_NUMPY_DTYPES[entry.dtype])
        if entry.dtype == "BF16":  # the upper half of a float32: widening is a shift
            raw = (raw.astype("<u4") << 16).view("<f4")
        return raw.astype(np.float64)

    def _read(self, entry: TensorEntry, offset: int, count: int) -> torch.Tensor:
        dtype = TORCH_DTYPES[entry.dtype]
        if count == 0:
            return torch.empty(0, dtype=dtype)
        buffer = bytearray(count * DTYPE_SIZES[entry.dtype])
        self.source.read_into(offset, memoryview(buffer))
        # safetensors is little-endian, as is every host torch ships for
        return torch.frombuffer(buffer, dtype=dtype)

    def tensors(self) -> LazyTensors:
        return LazyTensors(self)

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> TensorFile:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


class LazyTensors(Mapping[str, torch.Tensor]):
    """A ``TensorFile`` as a read-only mapping: each lookup reads that tensor, and only it."""

    def __init__(self, file: TensorFile) -> None:
        self._file = file

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self._file.header.entries:
            raise KeyError(name)
        return self._file.tensor(name)

    def read_into(self, name: str, out: torch.Tensor) -> bool:
        """``out`` filled with tensor ``name`` in place where it can be (TensorFile's
        ``read_tensor_into``); False, nothing read, otherwise."""
        if name not in self._file.header.entries:
            raise KeyError(name)
        return self._file.read_tensor_into(name, out)

    def __iter__(self) -> Iterator[str]:
        return iter(self._file.names)

    def __len__(self) -> int:
        return len(self._file.names)

    def __contains__(self, name: object) -> bool:
        return name in self._file.header.entries


def _check_like_the_loader(header: Header) -> None:
    """What ``safetensors`` refuses beyond our layout check, refused the same way, so that a
    blob checked here is exactly one the library would load (pinned in tests)."""
    for name in (*header.entries, *header.metadata.keys(), *header.metadata.values()):
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            raise ContractError(
                "malformed_blob", "not valid safetensors: a string is not valid UTF-8"
            ) from None
    position = header.data_start
    for name, entry in sorted(
        header.entries.items(), key=lambda item: (item[1].start, item[1].end)
    ):
        if entry.start != position:
            raise ContractError(
                "malformed_blob", f"not valid safetensors: invalid offset for tensor {name!r}"
            )
        position = entry.end
    if position != header.size:
        raise ContractError(
            "malformed_blob",
            "not valid safetensors: incomplete metadata, file not fully covered",
        )
