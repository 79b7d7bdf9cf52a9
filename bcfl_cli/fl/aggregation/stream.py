"""A round's tensors as a streaming rule reads them: one tensor name, one slice of it, at a time.

A rule never sees whole updates. It asks ``RoundTensors.rows(name, part)`` for the float64
values of one slice (``part``) of one tensor across the n updates, combines them, and drops
them; a rule that needs a global quantity first (a norm, a distance, a dot product) makes one
more pass over the names and accumulates it exactly (``numerics.ExactSum``), so it equals the
whole-vector value bit for bit. Everything the rules compute per element (IEEE adds,
multiplies, sorts along the update axis) is the same in a slice as in the whole tensor, so a
streamed aggregate has the bits of the whole-state one (pinned in
tests/fl/test_streaming_aggregation.py against the rules as they were before streaming).

Memory: an input that can read a slice of a tensor (``SliceReader``, e.g. a blob file) costs
n slices; any other ``Mapping`` costs n copies of the current tensor, loaded once a pass.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeGuard

import numpy as np
import torch

from bcfl_cli.errors import ContractError
from bcfl_cli.fl.numerics import ExactSum

State = Mapping[str, torch.Tensor]
#: Elements of one tensor combined at a time across the updates: a float64 row of a slice is
#: 512 KiB, and a rule holds a few rows per update (the values, a sorted copy, its indices):
#: about 12 MiB above idle for 4 updates, measured (45 MiB at 1 << 18, no faster).
PART = 1 << 16


class SliceReader(Protocol):
    """An input that reads part of a tensor without loading the rest (a file on disk)."""

    def shape_of(self, name: str) -> tuple[int, ...]: ...

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor: ...


def reads_slices(state: object) -> TypeGuard[SliceReader]:
    return callable(getattr(state, "read_flat", None)) and callable(
        getattr(state, "shape_of", None)
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch's element-wise work on one thread, then restore the caller's count.

    The values are the same with any thread count (element-wise IEEE operations; tested), but
    a slice is small and memory-bound: waking a second thread for each operation cost 3-10x
    the operation itself on a loaded 2-core machine. Like ``fl.training``, it changes nothing
    when the count is already 1, so that two such blocks on two threads can only ever restore
    the process's own setting.
    """
    threads = torch.get_num_threads()
    if threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Member:
    """One accepted update, as far as a rule may know it without reading its tensors."""

    hash: str
    num_samples: int


@dataclass(frozen=True)
class Plan:
    """What a rule decided: the updates it includes (hash order) and, for each slice of each
    tensor, the float64 delta to add to the base model (called once, in the output's order)."""

    included: list[str]
    delta: Callable[[str, slice], torch.Tensor]


def shape_now(state: State, name: str) -> tuple[int, ...] | None:
    """The shape of ``state[name]`` when it costs nothing to know (None: learn it on load)."""
    if reads_slices(state):
        return state.shape_of(name)
    if isinstance(state, dict):
        return tuple(state[name].shape)
    return None


def widen(tensor: torch.Tensor) -> torch.Tensor:
    """Float64 (exact for float32, float16 and bfloat16) with -0.0 turned into +0.0."""
    return tensor.detach().to("cpu", torch.float64) + 0.0


class RoundTensors:
    """The base model, the updates (hash order) and maybe the genesis model, read lazily."""

    def __init__(
        self,
        base: State,
        members: Sequence[Member],
        deltas: Sequence[State],
        initial: State | None,
        shapes: Mapping[str, tuple[int, ...]],
    ) -> None:
        self.members = list(members)
        self.names = sorted(shapes)
        self._shapes = dict(shapes)
        self._base = base
        self._deltas = list(deltas)
        self._initial = initial
        self._loaded_name: str | None = None
        self._loaded: dict[int, torch.Tensor] = {}  # source index -> flat tensor (one name)

    @property
    def has_initial(self) -> bool:
        return self._initial is not None

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def count(self, name: str) -> int:
        count = 1
        for d in self._shapes[name]:
            count *= d
        return count

    def whole(self, name: str) -> slice:
        return slice(0, self.count(name))

    def parts(self, name: str) -> list[slice]:
        """The slices of tensor ``name`` that a pass reads one after another."""
        count = self.count(name)
        return [slice(start, min(start + PART, count)) for start in range(0, count, PART)]

    # --- reading ---------------------------------------------------------------------------
    def _flat(self, index: int, name: str, part: slice) -> torch.Tensor:
        """Slice ``part`` of tensor ``name`` of source ``index`` (-1 base, -2 initial, else an
        update), in its own dtype, shape-checked against the base model."""
        state = self._source(index)
        if reads_slices(state):
            if state.shape_of(name) != self._shapes[name]:
                raise self._mismatch(index)
            return state.read_flat(name, part.start, part.stop)
        if self._loaded_name != name:
            self._loaded_name, self._loaded = name, {}
        flat = self._loaded.get(index)
        if flat is None:
            tensor = state[name]
            if tuple(tensor.shape) != self._shapes[name]:
                raise self._mismatch(index)
            flat = tensor.detach().reshape(-1)
            self._loaded[index] = flat
        return flat[part]

    def _source(self, index: int) -> State:
        if index == -1:
            return self._base
        if index == -2:
            assert self._initial is not None
            return self._initial
        return self._deltas[index]

    def _mismatch(self, index: int) -> ContractError:
        if index == -2:
            return ContractError("wrong_shape", "the initial model does not match the global model")
        if index == -1:
            return ContractError("wrong_shape", "the global model changed shape while read")
        return ContractError(
            "wrong_shape",
            f"update {self.members[index].hash} does not match the global model's tensors",
        )

    def rows(
        self, name: str, part: slice, which: Sequence[int] | None = None
    ) -> list[torch.Tensor]:
        """Slice ``part`` of tensor ``name`` of each update (all, or ``which``), widened."""
        indices = range(len(self.members)) if which is None else which
        return [widen(self._flat(i, name, part)) for i in indices]

    def base(self, name: str, part: slice) -> torch.Tensor:
        """The base model's slice in float64 (its signed zeros kept, as before streaming)."""
        return self._flat(-1, name, part).to("cpu", torch.float64)

    def trajectory(self, name: str, part: slice) -> torch.Tensor | None:
        """Base minus genesis (float64, exact for float32 models), or None without genesis."""
        if self._initial is None:
            return None
        return widen(self._flat(-1, name, part)) - widen(self._flat(-2, name, part))

    def release(self) -> None:
        """Drop the tensors held for the current name (the end of a pass)."""
        self._loaded_name, self._loaded = None, {}


# --- per-slice arithmetic shared by the rules -------------------------------------------------
def weighted(rows: Sequence[torch.Tensor], weights: Sequence[float], total: float) -> torch.Tensor:
    """sum(w_i * row_i) in order, divided once by ``total`` (separate IEEE multiply and add).

    The operations of ``0.0 + w_0 * row_0 + w_1 * row_1 + ...``, in that order, done in place
    in one accumulator and one scratch row rather than a new tensor a step (a slice of an
    aggregate is memory-bound). The rows are left as they are.
    """
    acc = torch.mul(rows[0], weights[0])
    acc.add_(0.0)  # the zero start: +0.0 + (-0.0) is +0.0
    scratch = torch.empty_like(acc)
    for row, weight in zip(rows[1:], weights[1:], strict=True):
        torch.mul(row, weight, out=scratch)
        acc.add_(scratch)
    return acc.div_(total)


def sorted_rows(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """``rows`` stacked on axis 0 and sorted along it (sorting is exact)."""
    return torch.sort(torch.stack(list(rows), dim=0), dim=0, stable=True).values


def median_of(rows: Sequence[torch.Tensor]) -> torch.Tensor:
    """Coordinate-wise median; with an even count (a + b) * 0.5 of the middle two."""
    n = len(rows)
    ordered = sorted_rows(rows)
    if n % 2:
        return ordered[n // 2].clone()
    return (ordered[n // 2 - 1] + ordered[n // 2]) * 0.5


def as_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.numpy()


def exact_sums(count: int) -> list[ExactSum]:
    return [ExactSum() for _ in range(count)]


__all__ = [
    "PART",
    "Member",
    "Plan",
    "RoundTensors",
    "SliceReader",
    "median_of",
    "shape_now",
    "sorted_rows",
    "weighted",
    "widen",
]
