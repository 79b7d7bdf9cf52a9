"""Tensors on the wire and on disk: safetensors only, never pickle.

Everything that comes from another member is parsed here, with the file size and the 8-byte
header length capped *before* parsing, and the header's offsets checked against the file, so a
blob that lies about its layout is refused before any tensor is built.
"""

from __future__ import annotations

import itertools
import json
import struct

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from bcfl_cli.errors import ContractError

MAX_HEADER_BYTES = 1024 * 1024
MAX_TENSORS = 4096
_DTYPE_SIZES = {
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


def check_safetensors_layout(data: bytes, *, max_bytes: int) -> dict[str, tuple[str, list[int]]]:
    """Validate the raw layout; returns name -> (dtype, shape). Raises ContractError."""
    if len(data) > max_bytes:
        raise ContractError("blob_too_large", f"{len(data)} bytes exceeds the {max_bytes} limit")
    if len(data) < 8:
        raise ContractError("malformed_blob", "shorter than a safetensors header")
    (header_len,) = struct.unpack("<Q", data[:8])
    if header_len > MAX_HEADER_BYTES or 8 + header_len > len(data):
        raise ContractError("malformed_blob", f"header length {header_len} is impossible")
    try:
        header = json.loads(data[8 : 8 + header_len])
    except ValueError as exc:
        raise ContractError("malformed_blob", "header is not JSON (not safetensors)") from exc
    if not isinstance(header, dict):
        raise ContractError("malformed_blob", "header is not a JSON object")
    header.pop("__metadata__", None)
    if len(header) > MAX_TENSORS:
        raise ContractError("malformed_blob", f"more than {MAX_TENSORS} tensors")
    body = len(data) - 8 - header_len
    layout: dict[str, tuple[str, list[int]]] = {}
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise ContractError("malformed_blob", f"tensor {name!r} entry malformed")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPE_SIZES:
            raise ContractError("wrong_dtype", f"tensor {name!r} has dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise ContractError("malformed_blob", f"tensor {name!r} shape malformed")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(isinstance(o, int) for o in offsets)
        ):
            raise ContractError("malformed_blob", f"tensor {name!r} offsets malformed")
        start, end = offsets
        count = 1
        for d in shape:
            count *= d
        if not 0 <= start <= end <= body or end - start != count * _DTYPE_SIZES[dtype]:
            raise ContractError("malformed_blob", f"tensor {name!r} offsets lie about its size")
        spans.append((start, end))
        layout[name] = (dtype, list(shape))
    spans.sort()
    for (_, a_end), (b_start, _) in itertools.pairwise(spans):
        if b_start < a_end:
            raise ContractError("malformed_blob", "tensor data regions overlap")
    return layout


def decode_tensors(data: bytes, *, max_bytes: int) -> dict[str, torch.Tensor]:
    """Parse untrusted safetensors bytes after checking their layout. Raises ContractError."""
    check_safetensors_layout(data, max_bytes=max_bytes)
    try:
        return dict(st_load(data))
    except Exception as exc:  # safetensors raises its own error types
        raise ContractError("malformed_blob", f"not valid safetensors: {exc}") from exc
