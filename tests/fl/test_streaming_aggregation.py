"""Streaming aggregation gives the bytes of the whole-state rules it replaced, for every rule.

The oracle is ``reference_aggregation`` (the rules as they were before issue 19). Inputs are
fed as plain dicts, as lazily loaded mappings that count what they materialise, and as slice
readers; the output is written by ``aggregate_to`` into a file-like object, in slices small
enough that every tensor spans several.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator, Mapping

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bcfl_cli.fl.aggregation import UpdateInput, aggregate, aggregate_to, stream
from bcfl_cli.fl.aggregation.base import prepare
from bcfl_cli.protocol.spec import AggregationSpec
from tests.fl.reference_aggregation import reference_model_bytes

RULE_SPECS = st.one_of(
    st.just(AggregationSpec(rule="fedavg")),
    st.sampled_from([0.01, 0.5, 1.0, 100.0]).map(
        lambda c: AggregationSpec(rule="clipped", clip_norm=c)
    ),
    st.just(AggregationSpec(rule="median")),
    st.sampled_from([0.0, 0.1, 0.2, 0.34, 0.49]).map(
        lambda b: AggregationSpec(rule="trimmed", trim_beta=b)
    ),
    st.tuples(st.integers(0, 3), st.integers(1, 5)).map(
        lambda fm: AggregationSpec(rule="krum", krum_f=fm[0], krum_m=fm[1])
    ),
    st.just(AggregationSpec(rule="cosine")),
    st.just(AggregationSpec(rule="cosine_trajectory")),
)
ALL_RULES = ["fedavg", "clipped", "median", "trimmed", "krum", "cosine", "cosine_trajectory"]


class CountingTensors(Mapping[str, torch.Tensor]):
    """A lazily loaded update: each access builds the tensor anew and is counted."""

    def __init__(self, state: dict[str, torch.Tensor]) -> None:
        self._state = state
        self.loads = 0

    def __getitem__(self, name: str) -> torch.Tensor:
        self.loads += 1
        return self._state[name].clone()

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._state))

    def __len__(self) -> int:
        return len(self._state)


class SliceTensors(CountingTensors):
    """A lazily loaded update that reads slices, as a blob file does."""

    def shape_of(self, name: str) -> tuple[int, ...]:
        return tuple(self._state[name].shape)

    def read_flat(self, name: str, start: int, stop: int) -> torch.Tensor:
        self.loads += 1
        return self._state[name].reshape(-1)[start:stop].clone()


VALUES = st.one_of(
    st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-1e6, max_value=1e6),
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e-30, 3.0]),
)


@st.composite
def rounds(draw: st.DrawFn) -> tuple[dict, list[tuple[str, dict, int]], dict]:
    shapes = draw(
        st.dictionaries(
            st.sampled_from(["w", "b", "emb", "z", "k.0"]),
            st.lists(st.integers(0, 4), min_size=0, max_size=2).map(tuple),
            min_size=1,
            max_size=4,
        )
    )

    def state() -> dict[str, torch.Tensor]:
        out = {}
        for name, shape in shapes.items():
            count = 1
            for d in shape:
                count *= d
            values = draw(st.lists(VALUES, min_size=count, max_size=count))
            out[name] = torch.tensor(values, dtype=torch.float32).reshape(shape)
        return out

    n = draw(st.integers(1, 6))
    updates = []
    for i in range(n):
        delta = state()
        if i and draw(st.booleans()):  # exact copies make ties for median, Krum and sorting
            delta = {k: v.clone() for k, v in updates[0][1].items()}
        updates.append(
            (hashlib.sha256(f"u{i}".encode()).hexdigest(), delta, draw(st.integers(1, 9)))
        )
    return state(), updates, state()


@pytest.fixture(autouse=True)
def _small_slices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stream, "PART", 3)  # every tensor of more than 3 values spans slices


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec=RULE_SPECS, inputs=rounds(), lazy=st.sampled_from(["dict", "counting", "slices"]))
def test_streamed_bytes_are_those_of_the_whole_state_rules(
    spec: AggregationSpec, inputs: tuple, lazy: str
) -> None:
    base, updates, initial = inputs
    expected, included = reference_model_bytes(spec, base, updates, initial)
    wrap = {"dict": dict, "counting": CountingTensors, "slices": SliceTensors}[lazy]
    fed = [UpdateInput(h, wrap(d), n) for h, d, n in reversed(updates)]
    out = io.BytesIO()
    result = aggregate_to(out, spec, wrap(base), fed, initial_state=wrap(initial))
    assert out.getvalue() == expected
    assert (result.model_hash, result.model_size) == (
        hashlib.sha256(expected).hexdigest(),
        len(expected),
    )
    assert result.included == included
    in_memory = aggregate(spec, base, updates, initial_state=initial)
    assert in_memory.model_bytes == expected
    assert in_memory.included == included


@pytest.mark.parametrize("rule", ALL_RULES)
def test_a_lazy_update_is_read_one_tensor_at_a_time_a_pass(rule: str) -> None:
    """Each pass loads each tensor of each update once (never all of them up front)."""
    g = torch.Generator().manual_seed(1)
    shapes = {"a": (4, 3), "b": (5,), "c": (2, 2)}
    base = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    lazy = [
        CountingTensors({k: torch.randn(s, generator=g) for k, s in shapes.items()})
        for _ in range(5)
    ]
    updates = [UpdateInput(f"{i:064x}", u, 3) for i, u in enumerate(lazy)]
    held: list[int] = []

    def sink(name: str, piece: torch.Tensor) -> None:
        held.append(sum(u.loads for u in lazy))

    prepare(AggregationSpec(rule=rule), base, updates).run(sink)
    passes = {"fedavg": 1, "median": 1, "trimmed": 1, "clipped": 2, "krum": 2, "cosine": 2}
    most = passes.get(rule, 3) * len(shapes)
    assert all(u.loads <= most for u in lazy)
    assert held  # the sink was fed while reading, not after


@pytest.mark.parametrize("rule", ALL_RULES)
def test_the_bits_do_not_depend_on_torchs_thread_count(
    rule: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine runs on one thread for speed only: with the switch off, any count agrees."""
    import contextlib

    from bcfl_cli.fl.aggregation import base as engine

    monkeypatch.setattr(stream, "PART", 1 << 16)
    monkeypatch.setattr(engine, "one_thread", contextlib.nullcontext)
    g = torch.Generator().manual_seed(7)
    shapes = {"big": (400, 500), "small": (3,)}  # large enough for torch to go parallel
    state = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    updates = [
        UpdateInput(
            f"{i:064x}",
            {k: torch.randn(s, generator=g) * 10.0 ** (i % 3) for k, s in shapes.items()},
            1 + i,
        )
        for i in range(6)
    ]
    spec = AggregationSpec(rule=rule, krum_f=1, krum_m=3)
    threads = torch.get_num_threads()
    default = aggregate(spec, state, updates, initial_state=state).model_hash
    try:
        torch.set_num_threads(1)
        single = aggregate(spec, state, updates, initial_state=state).model_hash
    finally:
        torch.set_num_threads(threads)
    assert single == default


def _weighted_as_before(
    rows: list[torch.Tensor], weights: list[float], total: float
) -> torch.Tensor:
    """``stream.weighted`` as it was before it worked in place: a new tensor a step."""
    acc = torch.zeros_like(rows[0])
    for row, weight in zip(rows, weights, strict=True):
        term = row * weight
        acc = acc + term
    return acc / total


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.lists(st.floats(allow_nan=False, width=32), min_size=3, max_size=3),
        min_size=1,
        max_size=5,
    ),
    st.lists(st.integers(1, 2**29 - 1), min_size=5, max_size=5),
)
def test_weighted_in_place_has_the_bits_of_a_new_tensor_a_step(
    rows: list[list[float]], samples: list[int]
) -> None:
    tensors = [torch.tensor(row, dtype=torch.float64) for row in rows]
    weights = [float(n) for n in samples[: len(rows)]]
    kept = [t.clone() for t in tensors]
    expected = _weighted_as_before(tensors, weights, float(sum(weights)))
    got = stream.weighted(tensors, weights, float(sum(weights)))
    assert torch.equal(got.view(torch.int64), expected.view(torch.int64))
    assert all(torch.equal(a.view(torch.int64), b.view(torch.int64)) for a, b in zip(tensors, kept))
