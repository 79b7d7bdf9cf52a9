"""Norms and distances that every peer computes to the same bit.

A norm or distance decides which updates a rule keeps (the contract's norm bound, clipping,
Krum's selection), so a last-bit difference between two peers is a fork. Library reductions
(``torch.norm``, ``numpy.sum``) are not fit for that: their summation order depends on the
thread count and the SIMD width. Here every element is widened to float64 and squared
element-wise (IEEE, so identical everywhere), and the squares are added exactly and rounded
once (what ``math.fsum`` returns), whatever the order of the inputs. The square root is
correctly rounded by IEEE 754 too. The result therefore depends only on the multiset of input
values: not on the machine, the thread count, nor the order of tensors or elements.

The exact sum is computed vectorised rather than by ``math.fsum`` over Python floats (which
took ~0.15 s for a 1M-parameter update, the bulk of a syncing node's checks): every finite double
is an integer number of 2**-1074, so the values are split by their exponent field into integer
mantissas, summed per exponent exactly (partial sums of integers below 2**53 are exact in
float64 whatever the order), combined as one Python integer and divided by 2**1074 once, which
CPython rounds correctly (round-half-even), as ``fsum`` does: the same bits, pinned against
``fsum`` in tests/fl/test_numerics.py. Non-finite values go through ``fsum`` itself.

The sum of the squares of float32 values, which every update's norm takes, has a faster exact
path (``float32_squares_units``): their float64 squares are exact, and Rump, Ogita and Oishi's
error-free extraction splits them into a few float64 vectors whose plain sums are exact by
construction (``_float32_squares_split``); the exponent bins remain for the pieces whose values
span too many binades. Both give the same integer, pinned against each other on adversarial
inputs (tests/fl/test_numerics.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np
import torch

#: Elements squared per step: bounds the temporary arrays (a 64 MB blob would otherwise need
#: several copies of itself at once). Below 2**26, so per-exponent sums stay exact (see above).
CHUNK = 1 << 20
#: Below this many values in all, :func:`exact_sum` is ``math.fsum`` itself (faster there).
SMALL_SUM = 4096
_HALF = 26
_LOW = (1 << _HALF) - 1
_FRACTION = (1 << 52) - 1
_UNIT = 1 << 1074  # every finite double is an integer number of 2**-1074


def as_float64(tensor: torch.Tensor) -> np.ndarray:
    """Flat float64 copy of ``tensor`` (widening float32 to float64 is exact)."""
    return tensor.detach().to("cpu", torch.float64).reshape(-1).numpy()


def _squares(flat: np.ndarray) -> Iterator[np.ndarray]:
    for start in range(0, flat.shape[0], CHUNK):
        chunk = flat[start : start + CHUNK]
        yield chunk * chunk


def _exact_total(values: np.ndarray) -> int:
    """Sum of finite float64 ``values``, exactly, as an integer number of 2**-1074 units."""
    bits = values.view(np.int64)
    biased = (bits >> 52) & 0x7FF  # the exponent field
    mantissa = bits & _FRACTION
    mantissa[biased > 0] |= 1 << 52  # the implicit leading bit of normal numbers
    negative = bits < 0
    if negative.any():
        mantissa = np.where(negative, -mantissa, mantissa)
    # |value| = mantissa * 2**(max(biased, 1) - 1075): one bin per exponent. Each bin sums
    # fewer than 2**26 integers below 2**27 in magnitude: exact in float64, in any order.
    bins = np.maximum(biased, 1)
    low = np.bincount(bins, weights=(mantissa & _LOW).astype(np.float64), minlength=2047)
    high = np.bincount(bins, weights=(mantissa >> _HALF).astype(np.float64), minlength=2047)
    total = 0
    for index in np.flatnonzero((low != 0) | (high != 0)).tolist():
        total += ((int(high[index]) << _HALF) + int(low[index])) << (index - 1)
    return total


def exact_sum(arrays: Iterable[np.ndarray]) -> float:
    """``math.fsum`` of every element of ``arrays`` (float64): the exactly rounded sum.

    The same bits as ``fsum``, and ``OverflowError`` when the sum passes the largest double.
    (Given mixed signs, ``fsum`` may also refuse when only a partial sum overflows; that
    fall-back only runs for non-finite input, which the contract never lets through.)

    Up to ``SMALL_SUM`` values in all (a small model's update: the contract sums the squares
    of each one) are summed by ``fsum`` itself, the definition, which costs less there than
    the vectorised path's fixed ~0.1 ms; a partial sum that overflows in ``fsum`` goes on to
    the vectorised path, which rounds the exact total.
    """
    head: list[np.ndarray] = []
    size = 0
    rest = iter(arrays)
    for values in rest:
        flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        head.append(flat)
        size += flat.shape[0]
        if size > SMALL_SUM:
            break
    else:
        try:
            return math.fsum(itertools.chain.from_iterable(a.tolist() for a in head))
        except OverflowError:
            pass
    return _vectorised_sum(itertools.chain(head, rest))


def _vectorised_sum(arrays: Iterable[np.ndarray]) -> float:
    """:func:`exact_sum` by integer mantissas binned per exponent (the module's docstring)."""
    total = 0
    # Small arrays (a model's tensors) are summed together, up to CHUNK values at a time: the
    # integer total is the same in any grouping, and each _exact_total call has a fixed cost.
    pending: list[np.ndarray] = []
    size = 0
    for values in arrays:
        flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        if flat.size and not np.isfinite(flat).all():
            total += _exact_total_of(pending)
            rest = itertools.chain.from_iterable(np.asarray(a).ravel().tolist() for a in arrays)
            return math.fsum(itertools.chain(_pieces(total), flat.tolist(), rest))
        for start in range(0, flat.shape[0], CHUNK):
            piece = flat[start : start + CHUNK]
            if size + piece.shape[0] > CHUNK:
                total += _exact_total_of(pending)
                pending, size = [], 0
            pending.append(piece)
            size += piece.shape[0]
    total += _exact_total_of(pending)
    # correctly rounded (round-half-even) by CPython; OverflowError past the largest double
    return total / _UNIT if total else 0.0


def _exact_total_of(pieces: list[np.ndarray]) -> int:
    if not pieces:
        return 0
    return _exact_total(pieces[0] if len(pieces) == 1 else np.concatenate(pieces))


def _pieces(total: int) -> Iterator[float]:
    """Doubles that add up exactly to ``total`` units (for the fall-back to ``fsum``)."""
    sign = -1.0 if total < 0 else 1.0
    total, shift = abs(total), -1074
    while total:
        yield sign * math.ldexp(float(total & _FRACTION), shift)
        total >>= 52
        shift += 52


class ExactSum:
    """A running exact sum of float64 values, fed piece by piece, rounded once by ``value``.

    Streaming aggregation sees a model one tensor (and one slice of it) at a time, yet a norm,
    a distance or a dot product must equal the whole-vector ``exact_sum`` bit for bit. The
    finite values are kept as one exact integer number of 2**-1074 units (so the pieces combine
    exactly, in any grouping), and the non-finite ones as ``math.fsum`` keeps them (their float
    sum in arrival order, and the sum of the infinities alone), so ``value`` is what ``fsum``
    over the concatenation returns: the same bits as ``exact_sum`` of all the pieces.
    """

    __slots__ = ("_infinite", "_special", "_total")

    def __init__(self) -> None:
        self._total = 0
        self._special = 0.0
        self._infinite = 0.0

    def add(self, values: np.ndarray) -> None:
        """Add every element of ``values`` (float64, any shape)."""
        flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        for start in range(0, flat.shape[0], CHUNK):
            piece = flat[start : start + CHUNK]
            finite = np.isfinite(piece)
            if finite.all():
                self._total += _exact_total(piece)
                continue
            self._total += _exact_total(piece[finite])
            for x in piece[~finite].tolist():  # in order, as fsum meets them
                if math.isinf(x):
                    self._infinite += x
                if not math.isnan(self._infinite):
                    # fsum's own addition, so that a NaN's sign and payload follow it exactly
                    self._special = math.fsum((self._special, x))

    def add_squares(self, values: np.ndarray) -> None:
        """Add the element-wise (IEEE) squares of ``values``."""
        flat = np.ascontiguousarray(values, dtype=np.float64).reshape(-1)
        for chunk in _squares(flat):
            self.add(chunk)

    def add_products(self, a: np.ndarray, b: np.ndarray) -> None:
        """Add the element-wise (IEEE) products of ``a`` and ``b`` (same length)."""
        fa = np.ascontiguousarray(a, dtype=np.float64).reshape(-1)
        fb = np.ascontiguousarray(b, dtype=np.float64).reshape(-1)
        for start in range(0, fa.shape[0], CHUNK):
            self.add(fa[start : start + CHUNK] * fb[start : start + CHUNK])

    def value(self) -> float:
        """The exactly rounded sum, as ``math.fsum`` of everything added would return it."""
        if self._special != 0.0:  # a NaN or an infinity was added (fsum's own test)
            if math.isnan(self._infinite):
                raise ValueError("-inf + inf in fsum")
            return self._special
        # correctly rounded (round-half-even) by CPython; OverflowError past the largest double
        return self._total / _UNIT if self._total else 0.0


def _sum_of_squares_arrays(arrays: Iterable[np.ndarray]) -> float:
    return exact_sum(itertools.chain.from_iterable(_squares(a) for a in arrays))


def sum_of_squares(tensors: Iterable[torch.Tensor]) -> float:
    """Exactly rounded sum of the squares of every element of ``tensors``.

    Finite float32 tensors of more than ``SMALL_SUM`` values take ``float32_squares_units``,
    cheaper than widening and squaring in float64 first; the exact total is the same integer,
    rounded the same way: the same bits.
    """
    tensors = list(tensors)
    elements = sum(t.numel() for t in tensors)
    if elements > SMALL_SUM and all(t.dtype == torch.float32 for t in tensors):
        flats = [t.detach().to("cpu").contiguous().reshape(-1).numpy() for t in tensors]
        if all(bool(np.isfinite(flat).all()) for flat in flats):
            return from_units(sum(float32_squares_units(flat) for flat in flats))
    return _sum_of_squares_arrays(as_float64(t) for t in tensors)


def float32_squares_units(values: np.ndarray) -> int:
    """The sum of the squares of finite float32 ``values``, exactly, in 2**-1074 units (add
    such totals in any grouping, then round once with ``from_units``): the integer
    ``exact_sum`` over the float64 squares gives, at a fraction of its CPU.

    Taken ``SPLIT_CHUNK`` values at a time (their float64 squares stay in a core's cache) by
    ``_float32_squares_split``, or by the exponent bins of ``_float32_squares_total`` when a
    piece's values span too many binades for the split to pay (or hold subnormals).
    """
    if values.dtype != np.float32:  # another byte order is fine; another type is a bug
        if values.dtype.kind != "f" or values.dtype.itemsize != 4:
            raise TypeError(f"float32 values expected, got {values.dtype}")
        values = values.astype(np.float32)
    flat = values.reshape(-1)
    return sum(
        _float32_squares_split(flat[start : start + SPLIT_CHUNK])
        for start in range(0, flat.shape[0], SPLIT_CHUNK)
    )


#: Values per piece of ``_float32_squares_split``: 2**16, which its exactness bound assumes,
#: and 512 KiB of float64 squares, which stay in a core's L2 cache across its passes.
SPLIT_CHUNK = 1 << 16
#: Bits of the squares' range (top bound over lowest unit) that one extraction takes off.
_SPLIT_BITS = 37
#: Extractions past which the exponent bins cost less: measured, 65,536 values at a time, the
#: split 1.9 ns a value with one extraction (values within 13 binades), +0.6-0.8 ns each further
#: one (``2 * span + 11`` bits to take off, 37 at a time), the bins 5.6-6.0 ns at any span.
SPLIT_LEVELS = 6


def _float32_squares_split(values: np.ndarray) -> int:
    """What ``_float32_squares_total`` returns, for at most 2**16 finite float32 ``values``,
    by float64 sums that are exact by construction rather than by exponent bins.

    Each square ``s = m*m * 2**(2*max(e, 1) - 300)`` is exact in float64 (48 bits), below
    ``2**a`` with ``a = 2*emax - 252`` and a multiple of ``2**lu`` with ``lu = 2*emin - 300``
    (``emax``, ``emin``: the largest and smallest exponent field of the nonzero values; none
    subnormal, so every double met is a multiple of 2**-298 and normal, whatever the FPU's
    denormal mode). With ``b = a + 16``, ``sigma = 2**b`` and ``|s| <= 2**(b - 16)``:

    - if ``b - 53 <= lu``, the plain float64 sum of the 2**16 values is exact in any order
      (every partial sum is a multiple of 2**lu of magnitude at most 2**b = 2**53 units);
    - otherwise ``q = (sigma + s) - sigma`` is ``s`` rounded to a multiple of ``2**(b - 53)``
      (Sterbenz: the subtraction is exact) with ``|q| <= 2**(b - 16)``, so the sum of the
      ``q`` is exact in any order by the same count, and ``r = s - q`` is the rounding error
      of ``sigma + s``, exactly representable, a multiple of 2**lu with ``|r| <= 2**(b - 53)``:
      the remainders meet the same conditions with ``b - 37``, until the first case.

    This is Rump, Ogita and Oishi's error-free extraction (``ExtractVector``, "Accurate
    floating-point summation", SIAM J. Sci. Comput. 31(1), 2008). Each float64 sum is turned
    into units exactly; the integers add up to the very total of the exponent bins.
    """
    bits = values.view(np.int32)
    magnitude = bits & 0x7FFFFFFF
    top = int(magnitude.max(initial=0))
    if top == 0:
        return 0
    # the smallest nonzero magnitude: 0 - 1 wraps to the largest uint32, above every other
    lowest = int((magnitude - 1).view(np.uint32).min()) + 1
    if lowest < 1 << 23:  # a subnormal value: the bins handle it without the FPU
        return _float32_squares_total(values)
    b = 2 * (top >> 23) - 252 + 16
    lu = 2 * (lowest >> 23) - 300
    if b - 53 - lu > _SPLIT_BITS * SPLIT_LEVELS:
        return _float32_squares_total(values)
    squares = np.multiply(values, values, dtype=np.float64)  # exact: 24 x 24 bits
    total = 0
    if b - 53 > lu:
        extracted = np.empty_like(squares)
        while b - 53 > lu:
            sigma = np.float64(math.ldexp(1.0, b))
            np.add(squares, sigma, out=extracted)
            np.subtract(extracted, sigma, out=extracted)
            np.subtract(squares, extracted, out=squares)
            total += _units_of(float(extracted.sum()))
            b -= _SPLIT_BITS
    return total + _units_of(float(squares.sum()))


def _units_of(value: float) -> int:
    """A finite double as an exact integer number of 2**-1074 units."""
    numerator, denominator = value.as_integer_ratio()
    return numerator << (1075 - denominator.bit_length())


def from_units(total: int) -> float:
    """An exact total of 2**-1074 units, correctly rounded (round-half-even) to a double."""
    return total / _UNIT if total else 0.0


def _float32_squares_total(values: np.ndarray) -> int:
    """Sum of the squares of finite float32 ``values`` (at most CHUNK), exactly, as an integer
    number of 2**-1074 units: what ``_exact_total`` of their float64 squares returns.

    A float32 is ``m * 2**(max(e, 1) - 150)`` with ``e`` its exponent field and ``m`` an
    integer below 2**24, so its square is ``m*m`` (below 2**48, exact in int64) times
    ``2**(2 * max(e, 1) - 300)``, at least 2**776 units. The ``m*m`` are binned by ``e`` in two
    24-bit halves, whose per-bin sums (fewer than 2**26 values below 2**24) are exact in
    float64, in any order.
    """
    bits = values.view(np.int32)
    biased = (bits >> 23) & 0xFF  # the exponent field (the sign bit masked off)
    mantissa = (bits & 0x7FFFFF).astype(np.int64)
    mantissa |= (biased != 0).astype(np.int64) << 23  # the implicit bit of normal numbers
    square = mantissa * mantissa
    low = np.bincount(biased, weights=(square & 0xFFFFFF).astype(np.float64), minlength=256)
    high = np.bincount(biased, weights=(square >> 24).astype(np.float64), minlength=256)
    total = 0
    for index in np.flatnonzero((low != 0) | (high != 0)).tolist():
        units = (int(high[index]) << 24) + int(low[index])
        total += units << (2 * max(index, 1) - 300 + 1074)
    return total


def l2_norm(state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm over all tensors of ``state``, treated as one long vector."""
    return math.sqrt(sum_of_squares(state.values()))


def squared_distance(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Squared Euclidean distance between two states with the same tensor names and shapes."""
    if set(a) != set(b):
        raise ValueError("states have different tensor names")
    return _sum_of_squares_arrays(as_float64(a[k]) - as_float64(b[k]) for k in sorted(a))


def dot(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """Inner product of two states: element-wise IEEE products, then their exactly rounded sum.

    Each product is one correctly rounded multiply (exact when both values are float32), and
    the sum is ``exact_sum``'s, so the result does not depend on the CPU or the thread count.
    """
    if set(a) != set(b):
        raise ValueError("states have different tensor names")
    return exact_sum(as_float64(a[k]) * as_float64(b[k]) for k in sorted(a))


def flat_float64(state: Mapping[str, torch.Tensor]) -> np.ndarray:
    """All tensors of ``state`` as one float64 vector, in sorted name order."""
    if not state:
        return np.zeros(0, dtype=np.float64)
    return np.concatenate([as_float64(state[k]) for k in sorted(state)])


def squared_distance_flat(a: np.ndarray, b: np.ndarray) -> float:
    """Squared distance of two flat float64 vectors (element-wise IEEE, then ``fsum``)."""
    return _sum_of_squares_arrays([a - b])
