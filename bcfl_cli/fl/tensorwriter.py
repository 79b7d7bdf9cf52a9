"""Write a safetensors file tensor by tensor, hashing while writing, never the whole model.

An aggregate of a 110M-parameter model is 440 MB; building it in memory and then encoding it
(``encode_tensors``) held it twice. This writer takes the layout first (names, dtypes and
shapes: everything the header needs), writes the header, then takes each tensor's bytes in
the order safetensors itself lays them out, in as many pieces as the caller likes. The bytes,
and so the hash that an ``aggregate`` transaction records, are identical to
``encode_tensors(state)`` (``safetensors.torch.save`` with the names sorted): pinned against it
in tests/fl/test_tensorwriter.py.

How ``safetensors.torch.save`` (0.8) lays a file out, as that test pins it:

- data: tensors sorted by dtype, in ``DTYPE_ORDER`` (the Rust ``Dtype`` enum, largest first),
  then by name (UTF-8 byte order, the same as Python's code point order), back to back;
- header: a compact JSON object, one entry per tensor in that same order,
  ``{"dtype":..,"shape":[..],"data_offsets":[start,end]}``, no ``__metadata__`` when there is
  none, non-ASCII characters written raw, padded with spaces to a multiple of 8 bytes, after an
  8-byte little-endian length.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import BinaryIO

import torch
import xxhash

#: safetensors' dtype names, in the order its ``save`` writes them (first written first).
DTYPE_ORDER: dict[torch.dtype, str] = {
    torch.uint64: "U64",
    torch.int64: "I64",
    torch.float64: "F64",
    torch.complex64: "C64",
    torch.float32: "F32",
    torch.uint32: "U32",
    torch.int32: "I32",
    torch.bfloat16: "BF16",
    torch.float16: "F16",
    torch.uint16: "U16",
    torch.int16: "I16",
    torch.float8_e4m3fn: "F8_E4M3",
    torch.float8_e5m2: "F8_E5M2",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}
_RANK = {dtype: rank for rank, dtype in enumerate(DTYPE_ORDER)}
#: The header's length is padded to this (safetensors aligns the data that follows).
HEADER_ALIGN = 8


@dataclass(frozen=True)
class TensorSpec:
    """What the header says of one tensor."""

    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        count = 1
        for d in self.shape:
            count *= d
        return count * torch.empty((), dtype=self.dtype).element_size()


Layout = Mapping[str, TensorSpec]


def data_order(layout: Layout) -> list[str]:
    """The names in the order their data follows the header."""
    for name, spec in layout.items():
        if spec.dtype not in _RANK:
            raise ValueError(f"tensor {name!r}: safetensors has no dtype {spec.dtype}")
    return sorted(layout, key=lambda name: (_RANK[layout[name].dtype], name))


def header_bytes(layout: Layout) -> bytes:
    """The 8-byte length and the padded JSON header that ``safetensors.torch.save`` writes."""
    entries: dict[str, object] = {}
    offset = 0
    for name in data_order(layout):
        spec = layout[name]
        end = offset + spec.nbytes
        entries[name] = {
            "dtype": DTYPE_ORDER[spec.dtype],
            "shape": list(spec.shape),
            "data_offsets": [offset, end],
        }
        offset = end
    text = json.dumps(entries, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % HEADER_ALIGN)
    return struct.pack("<Q", len(text)) + text


def layout_of(state: Mapping[str, torch.Tensor]) -> dict[str, TensorSpec]:
    """The layout of in-memory tensors (what ``encode_tensors`` would write for them)."""
    return {name: TensorSpec(t.dtype, tuple(t.shape)) for name, t in state.items()}


class SafetensorsWriter:
    """Writes one safetensors file to ``out``: the header at once, then the tensors' bytes.

    ``write(name, piece)`` appends the next piece of tensor ``name`` (any shape: only its
    elements count, in row-major order); the names must come in ``order``, each in full.
    ``finish`` checks that every byte the header promised was written and returns the file's
    SHA-256 and size. A misuse raises ``ValueError``: it is a bug, never a peer's doing.
    """

    def __init__(self, out: BinaryIO, layout: Layout) -> None:
        self._out = out
        self._layout = dict(layout)
        self.order = data_order(self._layout)
        self._hash = hashlib.sha256()
        #: XXH3-128 of the same bytes: the store's cheap re-check of the file later
        #: (store/content_record.py), 0.03 s at 440 MB beside SHA-256's 0.3 s
        self._sum = xxhash.xxh3_128()
        self._size = 0
        self._index = 0  # the tensor being written
        self._written = 0  # its bytes so far
        self._emit(header_bytes(self._layout))

    def _emit(self, data: bytes | memoryview) -> None:
        self._hash.update(data)
        self._sum.update(data)
        self._out.write(data)
        self._size += len(data)

    def _skip_complete(self) -> None:
        while (
            self._index < len(self.order)
            and self._written == self._layout[self.order[self._index]].nbytes
        ):
            self._index += 1
            self._written = 0

    def write(self, name: str, piece: torch.Tensor) -> None:
        """Append ``piece``'s elements to tensor ``name`` (its dtype, in data order)."""
        self._skip_complete()
        if self._index >= len(self.order) or self.order[self._index] != name:
            expected = self.order[self._index] if self._index < len(self.order) else "nothing"
            raise ValueError(f"tensor {name!r} written out of order: expected {expected}")
        spec = self._layout[name]
        if piece.dtype != spec.dtype:
            raise ValueError(f"tensor {name!r}: {piece.dtype} written, {spec.dtype} declared")
        flat = piece.detach().to("cpu").contiguous().reshape(-1)
        data = flat.view(torch.uint8).numpy().data
        if self._written + len(data) > spec.nbytes:
            raise ValueError(f"tensor {name!r}: more bytes than its shape {spec.shape}")
        self._emit(data)
        self._written += len(data)

    def finish(self) -> tuple[str, int]:
        """(sha256 hex, size in bytes) of the file, once every tensor is complete."""
        self._skip_complete()
        if self._index != len(self.order):
            raise ValueError(f"tensor {self.order[self._index]!r} was not written in full")
        self._out.flush()
        return self._hash.hexdigest(), self._size

    @property
    def content_sum(self) -> str:
        """XXH3-128 (hex) of the bytes written so far (the whole file after ``finish``)."""
        return self._sum.hexdigest()


__all__ = [
    "DTYPE_ORDER",
    "Layout",
    "SafetensorsWriter",
    "TensorSpec",
    "data_order",
    "header_bytes",
    "layout_of",
]
