"""Aggregation rules: known results, bit-exactness under permutation and thread count."""

from __future__ import annotations

import hashlib
import math
import random

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import ContractError
from bcfl_cli.fl import numerics
from bcfl_cli.fl.aggregation import RULES, UpdateInput, aggregate, aggregate_hash
from bcfl_cli.fl.aggregation.base import Combined, Prepared
from bcfl_cli.fl.aggregation.trimmed import trim_count
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.protocol.spec import AggregationSpec

SPECS = [
    AggregationSpec(rule="fedavg"),
    AggregationSpec(rule="clipped", clip_norm=0.5),
    AggregationSpec(rule="median"),
    AggregationSpec(rule="trimmed", trim_beta=0.2),
    AggregationSpec(rule="krum", krum_f=1, krum_m=3),
    AggregationSpec(rule="cosine"),
    AggregationSpec(rule="cosine_trajectory"),
]


def _hash(i: int) -> str:
    return hashlib.sha256(f"update-{i}".encode()).hexdigest()


def _updates(seed: int, n: int, shapes: dict[str, tuple[int, ...]]) -> list[UpdateInput]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        # Mixed magnitudes make the float sums order-sensitive, which is what we guard.
        delta = {
            k: torch.randn(s, generator=g) * float(10 ** (i % 5 - 2)) for k, s in shapes.items()
        }
        out.append(UpdateInput(_hash(i), delta, 1 + (i * 37) % 100))
    return out


def _global(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(99)
    return {k: torch.randn(s, generator=g) for k, s in shapes.items()}


SHAPES = {"w": (7, 5), "b": (5,), "z": (1,)}


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.rule)
@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 9), perm_seed=st.integers(0, 10_000))
def test_permuting_updates_never_changes_the_hash(
    spec: AggregationSpec, seed: int, n: int, perm_seed: int
) -> None:
    updates = _updates(seed, n, SHAPES)
    shuffled = list(updates)
    random.Random(perm_seed).shuffle(shuffled)
    base = _global(SHAPES)
    a = aggregate(spec, base, updates)
    b = aggregate(spec, base, shuffled)
    assert a.model_hash == b.model_hash
    assert a.included == b.included == sorted(a.included)
    assert all(v.dtype == torch.float32 for v in a.new_state.values())


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.rule)
def test_thread_count_does_not_change_the_hash(spec: AggregationSpec) -> None:
    shapes = {"big": (400, 500), "small": (3,)}  # large enough for torch to go parallel
    updates = _updates(7, 6, shapes)
    base = _global(shapes)
    threads = torch.get_num_threads()
    default = aggregate(spec, base, updates).model_hash
    try:
        torch.set_num_threads(1)
        single = aggregate(spec, base, updates).model_hash
    finally:
        torch.set_num_threads(threads)
    assert single == default


def test_aggregate_hash_is_the_blob_hash() -> None:
    result = aggregate(AggregationSpec(), _global(SHAPES), _updates(1, 3, SHAPES))
    blob = encode_tensors(result.new_state)
    assert aggregate_hash(result.new_state) == hashlib.sha256(blob).hexdigest()
    assert result.model_hash == aggregate_hash(result.new_state)
    assert result.model_bytes == blob


def _one(values: list[float], samples: list[int] | None = None) -> list[UpdateInput]:
    counts = samples or [1] * len(values)
    return [
        UpdateInput(_hash(i), {"x": torch.tensor([v])}, counts[i]) for i, v in enumerate(values)
    ]


ZERO = {"x": torch.tensor([0.0])}


def test_fedavg_is_sample_weighted() -> None:
    r = aggregate(AggregationSpec(rule="fedavg"), ZERO, _one([1.0, 4.0], [3, 1]))
    assert r.new_state["x"].item() == pytest.approx(1.75)
    assert r.params == {"clip_norm": "5.0", "trim_beta": "0.1", "krum_f": 1, "krum_m": 1}
    assert r.rule == "fedavg"


def test_fedavg_adds_the_mean_delta_to_the_global_model() -> None:
    base = {"x": torch.tensor([10.0])}
    r = aggregate(AggregationSpec(rule="fedavg"), base, _one([1.0, 3.0]))
    assert r.new_state["x"].item() == 12.0


def test_clipped_bounds_each_update() -> None:
    spec = AggregationSpec(rule="clipped", clip_norm=1.0)
    r = aggregate(spec, ZERO, _one([0.5, 100.0]))
    assert r.new_state["x"].item() == pytest.approx(0.75)
    assert r.params["clip_norm"] == "1.0"


def test_clip_uses_the_norm_over_all_tensors() -> None:
    spec = AggregationSpec(rule="clipped", clip_norm=5.0)
    base = {"a": torch.zeros(1), "b": torch.zeros(1)}
    upd = UpdateInput(_hash(0), {"a": torch.tensor([30.0]), "b": torch.tensor([40.0])}, 1)
    r = aggregate(spec, base, [upd])
    assert r.new_state["a"].item() == pytest.approx(3.0)
    assert r.new_state["b"].item() == pytest.approx(4.0)


def test_median_odd_and_even() -> None:
    spec = AggregationSpec(rule="median")
    assert aggregate(spec, ZERO, _one([5.0, -1.0, 1000.0])).new_state["x"].item() == 5.0
    assert aggregate(spec, ZERO, _one([5.0, -1.0, 1000.0, 1.0])).new_state["x"].item() == 3.0


def test_median_is_not_weighted_by_claimed_samples() -> None:
    r = aggregate(AggregationSpec(rule="median"), ZERO, _one([1.0, 2.0, 99.0], [1, 1, 10**6]))
    assert r.new_state["x"].item() == 2.0


def test_median_never_depends_on_signed_zeros() -> None:
    spec = AggregationSpec(rule="median")
    base = {"x": torch.tensor([-0.0])}
    a = aggregate(spec, base, _one([-0.0, 0.0, -0.0]))
    b = aggregate(spec, base, _one([0.0, -0.0, 0.0]))
    assert a.model_hash == b.model_hash


def test_trimmed_drops_both_ends() -> None:
    spec = AggregationSpec(rule="trimmed", trim_beta=0.2)
    values = [1000.0, 1.0, 2.0, 3.0, -1000.0]
    r = aggregate(spec, ZERO, _one(values))
    assert r.new_state["x"].item() == 2.0
    assert r.params["trim_beta"] == "0.2"


def test_trim_count_uses_the_decimal_beta() -> None:
    assert 0.29 * 100 < 29
    assert trim_count(0.29, 100) == 29
    assert trim_count(0.1, 10) == 1
    assert trim_count(0.49, 3) == 1
    assert trim_count(0.49, 2) == 0
    assert trim_count(0.0, 10) == 0


def test_trimmed_with_zero_beta_is_the_plain_mean() -> None:
    r = aggregate(AggregationSpec(rule="trimmed", trim_beta=0.0), ZERO, _one([1.0, 2.0, 6.0]))
    assert r.new_state["x"].item() == 3.0


def test_krum_picks_the_honest_cluster() -> None:
    g = torch.Generator().manual_seed(3)
    honest = [torch.ones(20) + 0.01 * torch.randn(20, generator=g) for _ in range(7)]
    attackers = [torch.full((20,), -5.0) + 0.01 * torch.randn(20, generator=g) for _ in range(3)]
    updates = [UpdateInput(_hash(i), {"x": t}, 10) for i, t in enumerate(honest + attackers)]
    spec = AggregationSpec(rule="krum", krum_f=3, krum_m=4)
    r = aggregate(spec, {"x": torch.zeros(20)}, updates)
    honest_hashes = {_hash(i) for i in range(7)}
    assert len(r.included) == 4
    assert set(r.included) <= honest_hashes
    assert torch.allclose(r.new_state["x"], torch.ones(20), atol=0.05)
    assert (r.params["krum_f"], r.params["krum_m"]) == (3, 4)


def test_krum_breaks_exact_ties_by_hash() -> None:
    updates = _one([1.0, 1.0, 1.0])
    r = aggregate(AggregationSpec(rule="krum", krum_f=0, krum_m=1), ZERO, updates)
    assert r.included == [min(_hash(i) for i in range(3))]


def test_krum_with_m_larger_than_n_keeps_everything() -> None:
    r = aggregate(AggregationSpec(rule="krum", krum_f=5, krum_m=9), ZERO, _one([1.0, 3.0]))
    assert len(r.included) == 2
    assert r.new_state["x"].item() == 2.0


def _vectors(rows: list[list[float]]) -> list[UpdateInput]:
    return [UpdateInput(_hash(i), {"x": torch.tensor(r)}, 10) for i, r in enumerate(rows)]


def test_cosine_gives_no_trust_to_flipped_or_empty_updates() -> None:
    g = torch.Generator().manual_seed(5)
    honest = [(torch.ones(20) + 0.1 * torch.randn(20, generator=g)).tolist() for _ in range(6)]
    flipped = [[-v for v in honest[0]], [-0.5 * v for v in honest[1]]]
    empty = [[0.0] * 20]
    r = aggregate(
        AggregationSpec(rule="cosine"), {"x": torch.zeros(20)}, _vectors(honest + flipped + empty)
    )
    assert set(r.included) == {_hash(i) for i in range(6)}
    honest_mean = torch.tensor(honest).mean(dim=0)
    assert torch.allclose(r.new_state["x"], honest_mean, atol=0.02)


def test_cosine_clips_a_boost_to_the_median_norm() -> None:
    rows = [[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [100.0, 0.0]]
    r = aggregate(AggregationSpec(rule="cosine"), {"x": torch.zeros(2)}, _vectors(rows))
    assert len(r.included) == 4
    assert r.new_state["x"].tolist() == [1.0, 0.0]


def test_cosine_weights_by_the_cosine_to_the_median() -> None:
    # the median is (1, 0): trust 1 for (2, 0) and (1, 0), 0.6 for (3, 4) (cosine 3/5); the
    # median norm (lower median of 1, 2, 5) is 2, so (3, 4) counts as (1.2, 1.6)
    rows = [[2.0, 0.0], [1.0, 0.0], [3.0, 4.0]]
    r = aggregate(AggregationSpec(rule="cosine"), {"x": torch.zeros(2)}, _vectors(rows))
    x, y = r.new_state["x"].tolist()
    assert x == pytest.approx((2.0 + 1.0 + 0.6 * 1.2) / 2.6)
    assert y == pytest.approx((0.6 * 1.6) / 2.6)


def test_cosine_falls_back_to_the_median_when_nothing_is_trusted() -> None:
    r = aggregate(
        AggregationSpec(rule="cosine"), {"x": torch.zeros(2)}, _vectors([[1.0, 0.0], [-1.0, 0.0]])
    )
    assert r.new_state["x"].tolist() == [0.0, 0.0]
    assert len(r.included) == 2


def test_cosine_is_not_weighted_by_claimed_samples() -> None:
    updates = [
        UpdateInput(_hash(0), {"x": torch.tensor([1.0, 0.0])}, 1),
        UpdateInput(_hash(1), {"x": torch.tensor([1.0, 1.0])}, 10**6),
        UpdateInput(_hash(2), {"x": torch.tensor([1.0, 0.0])}, 1),
    ]
    r = aggregate(AggregationSpec(rule="cosine"), {"x": torch.zeros(2)}, updates)
    c = 1 / math.sqrt(2)  # (1, 1) against the median (1, 0), clipped to norm 1
    assert r.new_state["x"][1].item() == pytest.approx(c * c / (2 + c))


def test_single_update_works_for_every_rule() -> None:
    for spec in SPECS:
        r = aggregate(spec, ZERO, _one([0.25]))
        assert r.new_state["x"].item() == 0.25


def test_every_shipped_rule_is_registered() -> None:
    assert set(RULES) == {
        "fedavg",
        "clipped",
        "median",
        "trimmed",
        "krum",
        "cosine",
        "cosine_trajectory",
    }


def test_a_new_rule_plugs_in() -> None:
    class Zero:
        name = "fedavg"

        def combine(self, spec: AggregationSpec, updates: list[Prepared]) -> Combined:
            names = sorted(updates[0].delta)
            delta = {k: torch.zeros_like(updates[0].delta[k]) for k in names}
            return Combined(delta, [updates[0].hash])

    r = aggregate(AggregationSpec(), ZERO, _one([7.0, 8.0]), rules={"fedavg": Zero()})
    assert r.new_state["x"].item() == 0.0
    assert r.included == [min(_hash(0), _hash(1))]


def test_params_are_the_signed_aggregation_section() -> None:
    spec = AggregationSpec(rule="trimmed", trim_beta=0.25)
    document = spec.to_document()
    r = aggregate(spec, ZERO, _one([1.0]))
    assert r.params == {k: v for k, v in document.items() if k != "rule"}
    assert all(isinstance(v, str | int) and not isinstance(v, float) for v in r.params.values())


@pytest.mark.parametrize(
    ("updates", "reason"),
    [
        ([], "no_updates"),
        (_one([1.0]) + _one([2.0]), "duplicate_update"),
        ([UpdateInput(_hash(0), {"y": torch.zeros(1)}, 1)], "wrong_shape"),
        ([UpdateInput(_hash(0), {"x": torch.zeros(2)}, 1)], "wrong_shape"),
        ([UpdateInput(_hash(0), {"x": torch.zeros(1)}, 0)], "samples_out_of_bounds"),
    ],
)
def test_bad_inputs_are_refused(updates: list[UpdateInput], reason: str) -> None:
    with pytest.raises(ContractError) as info:
        aggregate(AggregationSpec(), ZERO, updates)
    assert info.value.reason == reason


def test_unknown_rule_is_refused() -> None:
    with pytest.raises(ContractError) as info:
        aggregate(AggregationSpec(), ZERO, _one([1.0]), rules={})
    assert info.value.reason == "unknown_rule"


# --- numerics -------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=False, allow_infinity=False, width=32), min_size=1, max_size=60
    ),
    perm_seed=st.integers(0, 1000),
)
def test_norm_is_exact_and_order_free(values: list[float], perm_seed: int) -> None:
    shuffled = list(values)
    random.Random(perm_seed).shuffle(shuffled)
    a = numerics.l2_norm({"a": torch.tensor(values, dtype=torch.float32)})
    half = len(shuffled) // 2
    b = numerics.l2_norm(
        {
            "p": torch.tensor(shuffled[:half], dtype=torch.float32),
            "q": torch.tensor(shuffled[half:], dtype=torch.float32),
        }
    )
    assert a == b
    assert a == math.sqrt(math.fsum(float(v) ** 2 for v in torch.tensor(values).tolist()))


def test_norm_and_distance_do_not_depend_on_threads() -> None:
    g = torch.Generator().manual_seed(5)
    a = {"w": torch.randn(300_000, generator=g) * 1e3, "v": torch.randn(10, generator=g)}
    b = {"w": torch.randn(300_000, generator=g), "v": torch.randn(10, generator=g) * 1e-6}
    threads = torch.get_num_threads()
    default = (numerics.l2_norm(a), numerics.squared_distance(a, b))
    try:
        torch.set_num_threads(1)
        single = (numerics.l2_norm(a), numerics.squared_distance(a, b))
    finally:
        torch.set_num_threads(threads)
    assert single == default
    flat = numerics.squared_distance_flat(numerics.flat_float64(a), numerics.flat_float64(b))
    assert flat == default[1]


def test_distance_refuses_different_names() -> None:
    with pytest.raises(ValueError, match="names"):
        numerics.squared_distance({"a": torch.zeros(1)}, {"b": torch.zeros(1)})


def test_empty_state_flattens_to_nothing() -> None:
    assert numerics.flat_float64({}).shape == (0,)
    assert numerics.l2_norm({}) == 0.0


def test_plain_tuples_are_accepted() -> None:
    as_tuples = [(u.hash, u.delta, u.num_samples) for u in _one([1.0, 3.0])]
    r = aggregate(AggregationSpec(), ZERO, as_tuples)
    assert r.model_hash == aggregate(AggregationSpec(), ZERO, _one([1.0, 3.0])).model_hash
