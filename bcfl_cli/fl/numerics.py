"""Norms and distances that every peer computes to the same bit.

A norm or distance decides which updates a rule keeps (the contract's norm bound, clipping,
Krum's selection), so a last-bit difference between two peers is a fork. Library reductions
(``torch.norm``, ``numpy.sum``) are not fit for that: their summation order depends on the
thread count and the SIMD width. Here every element is widened to float64 and squared
element-wise (IEEE, so identical everywhere), and the squares are added with ``math.fsum``,
which returns the exactly rounded sum whatever the order of its inputs. The square root is
correctly rounded by IEEE 754 too. The result therefore depends only on the multiset of input
values: not on the machine, the thread count, nor the order of tensors or elements.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch

#: Elements squared per step: bounds the Python floats alive at once (a 64 MB blob would
#: otherwise become ~400 MB of them) without slowing ``fsum`` down.
CHUNK = 1 << 16


def as_float64(tensor: torch.Tensor) -> np.ndarray:
    """Flat float64 copy of ``tensor`` (widening float32 to float64 is exact)."""
    return tensor.detach().to("cpu", torch.float64).reshape(-1).numpy()


def _squares(flat: np.ndarray) -> Iterator[float]:
    for start in range(0, flat.shape[0], CHUNK):
        chunk = flat[start : start + CHUNK]
        yield from (chunk * chunk).tolist()


def _sum_of_squares_arrays(arrays: Iterable[np.ndarray]) -> float:
    return math.fsum(itertools.chain.from_iterable(_squares(a) for a in arrays))


def sum_of_squares(tensors: Iterable[torch.Tensor]) -> float:
    """Exactly rounded sum of the squares of every element of ``tensors``."""
    return _sum_of_squares_arrays(as_float64(t) for t in tensors)


def l2_norm(state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over all tensors of ``state``, treated as one long vector."""
    return math.sqrt(sum_of_squares(state.values()))


def squared_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Squared Euclidean distance between two states with the same tensor names and shapes."""
    if set(a) != set(b):
        raise ValueError("states have different tensor names")
    return _sum_of_squares_arrays(as_float64(a[k]) - as_float64(b[k]) for k in sorted(a))


def flat_float64(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """All tensors of ``state`` as one float64 vector, in sorted name order."""
    if not state:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([as_float64(state[k]) for k in sorted(state)])


def squared_distance_flat(a: np.ndarray, b: np.ndarray) -> float:
    """Squared distance of two flat float64 vectors (element-wise IEEE, then ``fsum``)."""
    return _sum_of_squares_arrays([a - b])
