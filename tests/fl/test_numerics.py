"""The exact sum of squares is bit-for-bit ``math.fsum``: a norm that differs is a fork."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.fl import numerics
from bcfl_cli.fl.numerics import exact_sum, l2_norm, squared_distance, sum_of_squares


def _reference_squares(arrays: list[np.ndarray]) -> float:
    """The definition: IEEE squares of the float64 values, then ``math.fsum``."""
    return math.fsum(float(x) * float(x) for a in arrays for x in a.ravel().tolist())


def _bits(x: float) -> bytes:
    return struct.pack("<d", x)


TINY = 5e-324
MAX = 1.7976931348623157e308


@pytest.mark.parametrize(
    "values",
    [
        [],
        [0.0],
        [-0.0, 0.0],
        [TINY],
        [TINY, TINY, 2.2250738585072014e-308, 2.225073858507201e-308],
        [1e308, -1e308, 1.0],
        [1.0, 2.0**-53, 2.0**-53],  # a tie: rounds to even
        [1.0, 2.0**-53],
        [1.0, 2.0**-53, 2.0**-106],  # just above the tie
        [1e16, 1.0, -1e16],
        [MAX, -MAX, MAX],
        [0.1] * 10,
        [1e100, 1.0, -1e100, 1e-100],
        [3.0, -(2.0**-1074), 2.0**-1074 * 7],
    ],
)
def test_exact_sum_is_fsum_on_edge_cases(values: list[float]) -> None:
    arr = np.array(values, dtype=np.float64)
    assert _bits(exact_sum([arr])) == _bits(math.fsum(values))


def test_exact_sum_overflow_and_non_finite_as_fsum() -> None:
    with pytest.raises(OverflowError):
        exact_sum([np.array([MAX, MAX])])
    with pytest.raises(OverflowError):
        math.fsum([MAX, MAX])
    assert exact_sum([np.array([1.0, math.inf]), np.array([2.0])]) == math.inf
    assert math.isnan(exact_sum([np.array([1.0]), np.array([math.nan])]))


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(finite, max_size=40), max_size=4))
def test_exact_sum_is_fsum_on_any_finite_doubles(parts: list[list[float]]) -> None:
    arrays = [np.array(p, dtype=np.float64) for p in parts]
    try:
        expected = math.fsum(x for p in parts for x in p)
    except OverflowError:
        # fsum also gives up when only a partial sum overflows ("intermediate overflow"),
        # which mixed signs allow; non-negative values (squares) overflow only at the end
        if all(x >= 0 for p in parts for x in p):
            with pytest.raises(OverflowError):
                exact_sum(arrays)
        return
    assert _bits(exact_sum(arrays)) == _bits(expected)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.lists(st.floats(-1e6, 1e6), max_size=12), max_size=6),
    st.integers(min_value=1, max_value=8),
)
def test_exact_sum_grouping_across_chunks_is_fsum(parts: list[list[float]], chunk: int) -> None:
    # Small arrays are summed together up to CHUNK values; any grouping gives the same bits.
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("bcfl_cli.fl.numerics.CHUNK", chunk)
        got = exact_sum(np.array(p, dtype=np.float64) for p in parts)
    assert _bits(got) == _bits(math.fsum(x for p in parts for x in p))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.floats(min_value=0.0, allow_infinity=False), max_size=40))
def test_exact_sum_is_fsum_on_non_negative_doubles(values: list[float]) -> None:
    try:
        expected = math.fsum(values)
    except OverflowError:
        with pytest.raises(OverflowError):
            exact_sum([np.array(values, dtype=np.float64)])
        return
    assert _bits(exact_sum([np.array(values, dtype=np.float64)])) == _bits(expected)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=200))
def test_sum_of_squares_of_float32_is_fsum(values: list[float]) -> None:
    tensor = torch.tensor(values, dtype=torch.float32)
    flat = tensor.double().numpy()
    assert _bits(sum_of_squares([tensor])) == _bits(_reference_squares([flat]))


def test_float32_squares_take_the_integer_path_with_the_same_bits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    edges = [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38, 3.4028235e38, -3.4028235e38]
    gen = torch.Generator().manual_seed(3)
    tensors = [torch.tensor(edges, dtype=torch.float32), torch.randn(5000, generator=gen) * 1e-3]
    arrays = [t.double().numpy() for t in tensors]
    widened = numerics._sum_of_squares_arrays

    def refused(arrays: object) -> float:
        raise AssertionError("finite float32 tensors should not be widened to float64")

    monkeypatch.setattr(numerics, "_sum_of_squares_arrays", refused)
    assert _bits(sum_of_squares(tensors)) == _bits(_reference_squares(arrays))
    monkeypatch.setattr(numerics, "_sum_of_squares_arrays", widened)
    # not finite, or not all float32: the float64 path, as before
    for bad in (math.inf, -math.inf, math.nan):
        odd = [torch.tensor([1.0, bad, 2.0], dtype=torch.float32)]
        expected = _reference_squares([odd[0].double().numpy()])
        if math.isnan(expected):
            assert math.isnan(sum_of_squares(odd))
        else:
            assert _bits(sum_of_squares(odd)) == _bits(expected)
    mixed = [tensors[1], tensors[1].double() * 3]
    mixed_arrays = [t.double().numpy() for t in mixed]
    assert _bits(sum_of_squares(mixed)) == _bits(_reference_squares(mixed_arrays))


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e3, 1e30])
def test_large_arrays_across_chunks_match_fsum(
    scale: float, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(numerics, "CHUNK", 1 << 12)  # many chunks, as a large model has
    gen = torch.Generator().manual_seed(7)
    state = {
        "w": torch.randn(300, 97, generator=gen) * scale,
        "b": torch.randn(1001, generator=gen) * scale,
        "mixed": torch.cat([torch.randn(50, generator=gen) * 1e-20, torch.randn(50) * 1e20]),
    }
    arrays = [v.double().reshape(-1).numpy() for v in state.values()]
    assert _bits(sum_of_squares(state.values())) == _bits(_reference_squares(arrays))
    assert _bits(l2_norm(state)) == _bits(math.sqrt(_reference_squares(arrays)))
    other = {k: v * 0.5 + 1e-3 for k, v in state.items()}
    diffs = [(state[k].double() - other[k].double()).reshape(-1).numpy() for k in sorted(state)]
    assert _bits(squared_distance(state, other)) == _bits(_reference_squares(diffs))


def test_one_million_parameters_match_fsum() -> None:
    gen = torch.Generator().manual_seed(11)
    delta = {"a": torch.randn(1024, 1024, generator=gen) * 1e-3, "b": torch.randn(8192)}
    arrays = [v.double().reshape(-1).numpy() for v in delta.values()]
    assert _bits(l2_norm(delta)) == _bits(math.sqrt(_reference_squares(arrays)))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.floats(
                width=32, allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6
            ),
            st.floats(
                width=32, allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6
            ),
        ),
        max_size=200,
    )
)
def test_dot_of_float32_states_is_fsum_of_the_products(pairs: list[tuple[float, float]]) -> None:
    a = torch.tensor([p[0] for p in pairs], dtype=torch.float32)
    b = torch.tensor([p[1] for p in pairs], dtype=torch.float32)
    expected = math.fsum(float(x) * float(y) for x, y in zip(a.tolist(), b.tolist(), strict=True))
    assert _bits(numerics.dot({"w": a}, {"w": b})) == _bits(expected)


def test_dot_refuses_states_with_different_names() -> None:
    with pytest.raises(ValueError):
        numerics.dot({"a": torch.zeros(1)}, {"b": torch.zeros(1)})


# --- streaming: exact partial sums -------------------------------------------------------
def _outcome(thunk: object) -> object:
    try:
        return _bits(thunk())  # type: ignore[operator]
    except (ValueError, OverflowError) as exc:
        return type(exc)


@settings(max_examples=300, deadline=None)
@given(
    # finite values below 1e300, so that no partial sum of fsum's overflows (a case that the
    # contract's finite, float32-valued tensors never reach; see ``exact_sum``)
    values=st.lists(
        st.floats(min_value=-1e300, max_value=1e300)
        | st.sampled_from([math.inf, -math.inf, math.nan, -math.nan]),
        max_size=40,
    ),
    cuts=st.lists(st.integers(0, 40), max_size=5),
)
def test_exact_sum_fed_in_pieces_is_fsum_of_the_whole(values: list[float], cuts: list[int]) -> None:
    """What a streamed norm or distance rests on: pieces combine exactly, specials as fsum."""
    whole = np.array(values, dtype=np.float64)
    bounds = sorted({0, len(values), *(min(c, len(values)) for c in cuts)})
    acc = numerics.ExactSum()
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        acc.add(whole[lo:hi])
    assert _outcome(acc.value) == _outcome(lambda: math.fsum(values))
    if all(math.isfinite(v) for v in values):
        assert _outcome(acc.value) == _outcome(lambda: exact_sum([whole]))


@settings(max_examples=100, deadline=None)
@given(
    a=st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), min_size=1, max_size=30),
    cut=st.integers(0, 30),
)
def test_streamed_squares_and_products_match_the_whole_vector(a: list[float], cut: int) -> None:
    x = np.array(a, dtype=np.float64)
    y = x[::-1].copy()
    squares, products = numerics.ExactSum(), numerics.ExactSum()
    for part in (slice(0, cut), slice(cut, None)):
        squares.add_squares(x[part])
        products.add_products(x[part], y[part])
    assert _bits(squares.value()) == _bits(sum_of_squares([torch.from_numpy(x)]))
    dot = numerics.dot({"v": torch.from_numpy(x)}, {"v": torch.from_numpy(y)})
    assert _bits(products.value()) == _bits(dot)


# --- below SMALL_SUM values exact_sum is fsum itself: the vectorised path stays pinned here --
EDGE_CASES = [
    [],
    [0.0],
    [-0.0, 0.0],
    [-0.0],
    [TINY],
    [TINY, TINY, 2.2250738585072014e-308, 2.225073858507201e-308],
    [1e308, -1e308, 1.0],
    [1.0, 2.0**-53, 2.0**-53],
    [1.0, 2.0**-53],
    [1.0, 2.0**-53, 2.0**-106],
    [1e16, 1.0, -1e16],
    [MAX, -MAX, MAX],
    [0.1] * 10,
    [1e100, 1.0, -1e100, 1e-100],
    [3.0, -(2.0**-1074), 2.0**-1074 * 7],
]


@pytest.mark.parametrize("values", EDGE_CASES)
def test_the_vectorised_sum_is_fsum_on_edge_cases(values: list[float]) -> None:
    got = numerics._vectorised_sum([np.array(values, dtype=np.float64)])
    assert _bits(got) == _bits(math.fsum(values))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(finite, max_size=40), max_size=4))
def test_the_vectorised_sum_is_fsum_on_any_finite_doubles(parts: list[list[float]]) -> None:
    arrays = [np.array(p, dtype=np.float64) for p in parts]
    try:
        expected = math.fsum(x for p in parts for x in p)
    except OverflowError:
        return  # a partial sum overflowed in fsum: exact_sum then takes the vectorised path
    assert _bits(numerics._vectorised_sum(arrays)) == _bits(expected)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=300),
    st.integers(min_value=0, max_value=400),
)
def test_both_sides_of_the_small_sum_bound_give_the_same_bits(
    values: list[float], bound: int
) -> None:
    squares = [np.square(np.array(values, dtype=np.float64))]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(numerics, "SMALL_SUM", bound)
        got = exact_sum(squares)
    assert _bits(got) == _bits(numerics._vectorised_sum(squares))


def test_an_overflowing_partial_sum_in_fsum_goes_on_to_the_exact_total() -> None:
    values = [MAX, MAX, -MAX]  # fsum: intermediate overflow; exactly, the sum is MAX
    with pytest.raises(OverflowError):
        math.fsum(values)
    assert exact_sum([np.array(values)]) == MAX
    with pytest.raises(OverflowError):
        exact_sum([np.array([MAX, MAX])])


# The split path of float32_squares_units (error-free extraction in float64) against the
# exponent bins, which the tests above pin to fsum: the very same integer, on inputs built to
# hit its bounds: every binade span around a whole number of extractions (and past the bins'
# threshold), subnormals, zeros of both signs, the largest floats, and sizes on each side of
# the piece length.
_FLOAT32_EDGES = [0.0, -0.0, 1e-45, -1e-45, 1.1754942e-38, 1.1754944e-38, 3.4028235e38]
_SPLIT = numerics.SPLIT_CHUNK


def _binned_units(values: np.ndarray) -> int:
    """The exponent bins alone, piece by piece: the reference for the split path."""
    return sum(
        numerics._float32_squares_total(values[start : start + numerics.CHUNK])
        for start in range(0, values.shape[0], numerics.CHUNK)
    )


def _span_values(seed: int, size: int, top: int, span: int, edges: int) -> np.ndarray:
    """``size`` float32 values with exponent fields in [top - span, top], random mantissas
    and signs, the largest and smallest exponent present, and ``edges`` edge values."""
    rng = np.random.default_rng(seed)
    low = max(top - span, 0)
    exponents = rng.integers(low, top + 1, size=size, dtype=np.int64)
    mantissas = rng.integers(0, 1 << 23, size=size, dtype=np.int64)
    signs = rng.integers(0, 2, size=size, dtype=np.int64) << 31
    if size >= 2:
        exponents[rng.integers(0, size)] = low
        exponents[rng.integers(0, size)] = top
    bits = (signs | (exponents << 23) | mantissas).astype(np.uint32)
    values = bits.view(np.float32).copy()
    if edges and size:
        picks = rng.integers(0, len(_FLOAT32_EDGES), size=min(edges, size))
        where = rng.integers(0, size, size=picks.shape[0])
        values[where] = np.array(_FLOAT32_EDGES, dtype=np.float32)[picks]
    return values


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, 1, 2, 3, 100, _SPLIT - 1, _SPLIT, _SPLIT + 1, 2 * _SPLIT + 3]),
    st.integers(1, 254),
    st.integers(0, 254),
    st.sampled_from([0, 0, 0, 1, 5]),
)
def test_the_split_path_gives_the_bins_integer(
    seed: int, size: int, top: int, span: int, edges: int
) -> None:
    values = _span_values(seed, size, top, span, edges)
    assert numerics.float32_squares_units(values) == _binned_units(values)


@pytest.mark.parametrize("levels", range(numerics.SPLIT_LEVELS + 2))
@pytest.mark.parametrize("offset", [-1, 0, 1])
def test_the_split_path_on_each_side_of_every_extraction_count(levels: int, offset: int) -> None:
    # the squares' range is 2 * span + 48 bits; one extraction takes off 37 of them
    span = max(0, (37 * levels + 5 + offset * 2 - 48) // 2 + offset)
    for seed, top in ((levels, 254), (levels + 99, 127), (levels + 7, span + 1)):
        values = _span_values(seed, _SPLIT, min(top, 254), span, 0)
        assert numerics.float32_squares_units(values) == _binned_units(values)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(width=32, allow_nan=False, allow_infinity=False), max_size=300))
def test_the_split_path_on_any_float32_list(values: list[float]) -> None:
    array = np.array(values, dtype=np.float32)
    assert numerics.float32_squares_units(array) == _binned_units(array)
    if values:
        widened = array.astype(np.float64)
        assert _bits(numerics.from_units(numerics.float32_squares_units(array))) == _bits(
            _reference_squares([widened])
        )


def test_the_split_path_on_big_endian_and_strided_values() -> None:
    values = _span_values(5, 3 * _SPLIT + 17, 140, 30, 3)
    expected = _binned_units(values)
    assert numerics.float32_squares_units(values.astype(">f4")) == expected
    doubled = np.repeat(values, 2)
    assert numerics.float32_squares_units(doubled[::2]) == expected


def _one_sided(seed: int, top: int, span: int, sign: int) -> np.ndarray:
    """A full piece whose squares all leave the first extraction a remainder of one sign,
    near its bound (random remainders cancel, and would not test the sums' bounds), with one
    value ``span`` binades lower to set the lowest unit."""
    rng = np.random.default_rng(seed)
    mantissas = rng.integers(0, 1 << 23, size=1 << 19, dtype=np.int64)
    candidates = ((top << 23) | mantissas).astype(np.uint32).view(np.float32)
    squares = candidates.astype(np.float64) ** 2
    b = 2 * top - 252 + 16
    sigma = math.ldexp(1.0, b)
    remainders = squares - ((squares + sigma) - sigma)
    kept = candidates[remainders * sign > math.ldexp(1.0, b - 55)][: _SPLIT - 1]
    assert kept.shape[0] == _SPLIT - 1
    low = np.array([1.0], dtype=np.float32) * np.float32(math.ldexp(1.0, -span)) * kept[0]
    return np.concatenate([kept, low.astype(np.float32)])


@pytest.mark.parametrize("span", [0, 5, 13, 14, 15, 16, 17, 20, 32, 33, 50, 51])
@pytest.mark.parametrize("sign", [1, -1])
def test_the_split_path_when_every_remainder_has_one_sign(span: int, sign: int) -> None:
    values = _one_sided(span * 2 + (sign > 0), 150, span, sign)
    assert numerics.float32_squares_units(values) == _binned_units(values)


def test_the_sum_of_float32_squares_refuses_other_types() -> None:
    for dtype in (np.float64, np.float16, np.int32):
        with pytest.raises(TypeError):
            numerics.float32_squares_units(np.ones(3, dtype=dtype))
