"""A trainer's update, streamed: the base weights read from their blob one tensor at a time,
the delta computed, rounded to the genesis' update dtype and written tensor by tensor.

A node that trains a 110M-parameter model must not hold the update several times over: the
whole-update ``bytes`` of ``encode_tensors``, a dict of deltas, a decoded copy of the base. Here
the base is a read-only mapping over its safetensors file (``fl/tensorfile.py``: ``pread`` into
buffers of ours, no memory map), the delta of one tensor exists at a time, and the
file is written by ``fl/tensorwriter.py`` (the exact bytes ``encode_tensors`` gives for the same
tensors, hashed while written), summing the exact squared norm as it goes.

The update dtype (PROTOCOL.md §7.1): every delta value is rounded from float32 with
round-to-nearest-even (torch's cast). float16 ends at 65504: a finite delta that rounds to an
infinity is refused here with the tensor's name, never clamped (a clamped update is not the
one trained). A NaN or an infinity already in the delta is written as is, and the contract
rejects it as ``non_finite``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import BinaryIO

import torch

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.numerics import sum_of_squares
from bcfl_cli.fl.tensorfile import LazyTensors, TensorFile
from bcfl_cli.fl.tensorwriter import SafetensorsWriter, TensorSpec

#: The genesis' ``contract.update_dtype`` as torch dtypes.
UPDATE_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}
#: Elements rounded, checked, written and widened to float64 (for the norm) at a time: 8 MiB
#: of float64 whatever the tensor.
WRITE_CHUNK = 1 << 20
#: The largest finite float16; values from 65520 up round to infinity (nearest even).
FLOAT16_MAX = 65504.0

Shapes = Mapping[str, tuple[int, ...]]


def update_dtype(name: str) -> torch.dtype:
    """The torch dtype of a genesis ``contract.update_dtype``."""
    try:
        return UPDATE_DTYPES[name]
    except KeyError:
        raise UsageError(
            f"update dtype {name!r}: expected one of {sorted(UPDATE_DTYPES)}"
        ) from None


class BaseWeights(LazyTensors):
    """A round's base model over its blob (``fl/tensorfile.py``): each lookup reads one
    tensor with ``pread`` into memory of its own; ``shapes`` come from the header alone."""

    def __init__(self, file: TensorFile) -> None:
        super().__init__(file)
        self.shapes: dict[str, tuple[int, ...]] = {
            name: tuple(shape) for name, (_, shape) in file.layout.items()
        }


class DeltaView(Mapping[str, torch.Tensor]):
    """``trained - base`` in float32, computed for one name at a time (never all at once)."""

    def __init__(
        self, trained: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor], shapes: Shapes
    ) -> None:
        self.trained = trained
        self.base = base
        self.shapes = dict(shapes)

    def __getitem__(self, name: str) -> torch.Tensor:
        if name not in self.shapes:
            raise KeyError(name)
        local = self.trained[name].detach().to("cpu", torch.float32)
        base = self.base[name]
        if isinstance(self.base, BaseWeights) and base.dtype == torch.float32:
            # a tensor just read for this call: the difference may take its place (the same
            # IEEE subtraction, one tensor fewer in memory)
            return torch.sub(local, base, out=base)
        return (local - base.to(torch.float32)).contiguous()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.shapes))

    def __len__(self) -> int:
        return len(self.shapes)


def shapes_of(delta: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, ...]]:
    """The shapes of ``delta`` without computing it where it can say them (a DeltaView)."""
    known = getattr(delta, "shapes", None)
    if isinstance(known, Mapping):
        return {str(k): tuple(v) for k, v in known.items()}
    return {k: tuple(v.shape) for k, v in delta.items()}


def to_update_dtype(name: str, tensor: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``tensor`` rounded to ``dtype`` (nearest even); refuses a finite value that overflows."""
    if dtype == torch.float32:
        return tensor.to(torch.float32).contiguous()
    rounded = tensor.to(dtype).contiguous()
    overflow = torch.isinf(rounded) & torch.isfinite(tensor)
    if bool(overflow.any()):
        worst = float(tensor[overflow].abs().max())
        limit = FLOAT16_MAX if dtype == torch.float16 else float(torch.finfo(dtype).max)
        raise UsageError(
            f"the update's tensor {name!r} holds {worst:.6g}, beyond the largest "
            f"{_dtype_word(dtype)} ({limit:g}): the genesis fixes contract.update_dtype, and a "
            "value that does not fit is refused, not clamped",
            hint="lower the learning rate or the local steps; a consortium whose updates need "
            "that range uses update_dtype = 'bfloat16' or 'float32'",
        )
    return rounded


def _dtype_word(dtype: torch.dtype) -> str:
    return next(k for k, v in UPDATE_DTYPES.items() if v == dtype)


@dataclass(frozen=True)
class WrittenUpdate:
    """What :func:`write_update` wrote: its size, SHA-256 and exact L2 norm, and the XXH3-128
    of the same bytes (the blob store's cheap re-check of the file, store/content_record.py)."""

    size: int
    sha256: str
    norm: float
    content_sum: str = ""


def write_update(
    delta: Mapping[str, torch.Tensor],
    out: BinaryIO,
    dtype: torch.dtype = torch.float32,
    *,
    with_norm: bool = True,
) -> WrittenUpdate:
    """Write ``delta`` rounded to ``dtype`` as safetensors into ``out``, in bounded chunks.

    The bytes are those of ``encode_tensors`` on the rounded tensors. With ``with_norm``, the
    exact L2 norm of the rounded values (what the contract computes), else NaN. Beyond one
    tensor of ``delta``, only ``WRITE_CHUNK`` elements are rounded, checked and summed at once.
    """
    shapes = shapes_of(delta)
    writer = SafetensorsWriter(out, {k: TensorSpec(dtype, shape) for k, shape in shapes.items()})
    finite = True

    def pieces() -> Iterator[torch.Tensor]:
        nonlocal finite
        for name in writer.order:  # one dtype: the names sorted
            tensor = delta[name].detach()
            if tuple(tensor.shape) != shapes[name]:
                raise UsageError(
                    f"the update's tensor {name!r} has shape {list(tensor.shape)}, "
                    f"expected {list(shapes[name])}"
                )
            flat = tensor.to("cpu").reshape(-1)
            del tensor
            for start in range(0, flat.numel(), WRITE_CHUNK):
                rounded = to_update_dtype(name, flat[start : start + WRITE_CHUNK], dtype)
                writer.write(name, rounded)
                if not with_norm:
                    continue  # no norm asked (a node's trainer: its validators compute it)
                if finite and not bool(torch.isfinite(rounded).all()):
                    finite = False  # the contract rejects it as non_finite; no norm to sum
                if finite:
                    yield rounded

    squares = sum_of_squares(pieces())
    digest, size = writer.finish()
    norm = math.sqrt(squares) if finite and with_norm else math.nan
    return WrittenUpdate(size, digest, norm, writer.content_sum)


__all__ = [
    "UPDATE_DTYPES",
    "BaseWeights",
    "DeltaView",
    "WrittenUpdate",
    "shapes_of",
    "to_update_dtype",
    "update_dtype",
    "write_update",
]
