"""Tensors on the wire and on disk: safetensors only, never pickle.

Everything that comes from another member is parsed here, with the file size, the 8-byte
header length and the header's nesting capped *before* parsing, and the header's offsets
checked against the file, so a blob that lies about its layout is refused before any tensor is
built. Every failure is a ``ContractError`` (a verdict with a reason), never another exception:
a header of 5,000 nested ``[`` once raised ``RecursionError`` out of the contract and stalled
the round it was submitted to.
"""

from __future__ import annotations

import itertools
import json
import struct
from dataclasses import dataclass
from typing import Protocol

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bcfl_cli.errors import ContractError
from bcfl_cli.protocol.encoding import MAX_SAFE_INT, nesting_within

MAX_HEADER_BYTES = 1024 * 1024
MAX_TENSORS = 4096
#: A safetensors header nests three deep: {name: {"shape": [...]}}; ``__metadata__`` is a flat
#: string-to-string map. Anything deeper is refused before ``json.loads`` sees it.
MAX_HEADER_DEPTH = 3
#: Dimensions of one tensor (torch's own limit); each dimension and offset is an I-JSON safe
#: integer, so the element count of a lying header is a small product, not a huge one.
MAX_DIMS = 64
DTYPE_SIZES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
}


def encode_tensors(tensors: dict[str, torch.Tensor]) -> bytes:
    """Safetensors bytes of ``tensors``; deterministic (keys sorted, contiguous CPU copies)."""
    ordered = {k: tensors[k].detach().to("cpu").contiguous() for k in sorted(tensors)}
    return bytes(st_save(ordered))


class ByteSource(Protocol):
    """Random access to a blob's bytes, wherever they are: in memory or in a file on disk.

    The header validator reads only the first ``8 + header length`` bytes through it, so a
    file's layout is checked without reading its tensors.
    """

    @property
    def size(self) -> int: ...

    def read_into(self, offset: int, buffer: memoryview) -> None:
        """Fill ``buffer`` with the bytes at ``offset``; ContractError when they are not there."""
        ...


class BytesSource:
    """A blob already in memory, as a ``ByteSource`` (slices of a memoryview: no copy)."""

    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self._view = memoryview(data).cast("B")

    @property
    def size(self) -> int:
        return self._view.nbytes

    def read_into(self, offset: int, buffer: memoryview) -> None:
        end = offset + buffer.nbytes
        if not 0 <= offset <= end <= self._view.nbytes:
            raise ContractError("malformed_blob", f"bytes {offset}..{end} are past the end")
        buffer[:] = self._view[offset:end]

    def close(self) -> None:
        self._view.release()


def read_bytes(source: ByteSource, offset: int, length: int) -> bytes:
    """``length`` bytes of ``source`` at ``offset`` (for the header: at most 1 MiB)."""
    buffer = bytearray(length)
    source.read_into(offset, memoryview(buffer))
    return bytes(buffer)


@dataclass(frozen=True)
class TensorEntry:
    """Where one tensor lies in a blob: its dtype, shape and absolute byte range."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    @property
    def elements(self) -> int:
        return (self.end - self.start) // DTYPE_SIZES[self.dtype]


@dataclass(frozen=True)
class Header:
    """A validated safetensors header: the entries in header order, and the blob's size."""

    entries: dict[str, TensorEntry]
    metadata: dict[str, str]
    data_start: int
    size: int

    @property
    def layout(self) -> dict[str, tuple[str, list[int]]]:
        return {name: (e.dtype, list(e.shape)) for name, e in self.entries.items()}


def check_safetensors_layout(
    data: bytes | ByteSource, *, max_bytes: int
) -> dict[str, tuple[str, list[int]]]:
    """Validate the raw layout; returns name -> (dtype, shape). Raises ContractError."""
    source = BytesSource(data) if isinstance(data, bytes | bytearray | memoryview) else data
    return read_header(source, max_bytes=max_bytes).layout


def read_header(source: ByteSource, *, max_bytes: int) -> Header:
    """The one header validator, for bytes and files: reads the length and the header only."""
    size = source.size
    if size > max_bytes:
        raise ContractError("blob_too_large", f"{size} bytes exceeds the {max_bytes} limit")
    if size < 8:
        raise ContractError("malformed_blob", "shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", read_bytes(source, 0, 8))
    if header_len > MAX_HEADER_BYTES or 8 + header_len > size:
        raise ContractError("malformed_blob", f"header length {header_len} is impossible")
    header = _parse_header(read_bytes(source, 8, header_len))
    metadata = header.pop("__metadata__", {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise ContractError("malformed_blob", "__metadata__ is not a string-to-string map")
    if len(header) > MAX_TENSORS:
        raise ContractError("malformed_blob", f"more than {MAX_TENSORS} tensors")
    data_start = 8 + header_len
    body = size - data_start
    entries: dict[str, TensorEntry] = {}
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ContractError("malformed_blob", f"tensor {name!r} entry malformed")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(dtype, str):  # found by bench/fuzz.py: a list is not hashable
            raise ContractError("malformed_blob", f"tensor {name!r} dtype is not a string")
        if dtype not in DTYPE_SIZES:
            raise ContractError("wrong_dtype", f"tensor {name!r} has dtype {dtype!r}")
        if not (isinstance(shape, list) and len(shape) <= MAX_DIMS and all(map(_size_int, shape))):
            raise ContractError("malformed_blob", f"tensor {name!r} shape malformed")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_size_int, offsets))):
            raise ContractError("malformed_blob", f"tensor {name!r} offsets malformed")
        start, end = offsets
        count = 1
        for d in shape:
            count *= d
        if not 0 <= start <= end <= body or end - start != count * DTYPE_SIZES[dtype]:
            raise ContractError("malformed_blob", f"tensor {name!r} offsets lie about its size")
        spans.append((start, end))
        entries[name] = TensorEntry(dtype, tuple(shape), data_start + start, data_start + end)
    spans.sort()
    for (_, a_end), (b_start, _) in itertools.pairwise(spans):
        if b_start < a_end:
            raise ContractError("malformed_blob", "tensor data regions overlap")
    return Header(entries, metadata, data_start, size)


def _size_int(value: object) -> bool:
    """A dimension or an offset: a plain (not bool) integer in 0 .. 2^53 - 1."""
    return type(value) is int and 0 <= value <= MAX_SAFE_INT


def _unique_pairs(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """Refuse duplicate names: the layout check and the tensor loader must read the same entry."""
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ContractError("malformed_blob", "duplicate name in the header")
    return result


def _no_constant(text: str) -> object:
    raise ContractError("malformed_blob", f"non-standard JSON constant {text} in the header")


def _parse_header(raw: bytes) -> dict[str, object]:
    """The header as a JSON object; any failure is ``malformed_blob``, never another exception."""
    if not nesting_within(raw, MAX_HEADER_DEPTH):
        raise ContractError(
            "malformed_blob", f"header nests deeper than {MAX_HEADER_DEPTH} levels or is unbalanced"
        )
    try:
        text = raw.decode("utf-8")  # safetensors is UTF-8; json.loads would also guess UTF-16
        header = json.loads(text, object_pairs_hook=_unique_pairs, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise ContractError("malformed_blob", "header is not JSON (not safetensors)") from exc
    if not isinstance(header, dict):
        raise ContractError("malformed_blob", "header is not a JSON object")
    return header


def decode_tensors(data: bytes, *, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse untrusted safetensors bytes after checking their layout. Raises ContractError."""
    check_safetensors_layout(data, max_bytes=max_bytes)
    try:
        return dict(st_load(data))
    except Exception as exc:  # safetensors raises its own error types
        raise ContractError("malformed_blob", f"not valid safetensors: {exc}") from exc
