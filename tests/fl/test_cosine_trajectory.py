"""``cosine_trajectory``: updates that push the model back toward genesis are left out."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import ContractError, VerificationError
from bcfl_cli.fl.aggregation import UpdateInput, aggregate, rule_needs_initial_model
from bcfl_cli.fl.models import initial_state
from bcfl_cli.fl.tensors import decode_tensors
from bcfl_cli.protocol.spec import AggregationSpec
from bcfl_cli.training.rounds import compute_aggregate
from tests.fl.test_checks import SPEC, Chain, delta

RULE = AggregationSpec(rule="cosine_trajectory")
COSINE = AggregationSpec(rule="cosine")
ZERO2 = {"x": torch.zeros(2)}


def _h(i: int) -> str:
    return hashlib.sha256(f"u{i}".encode()).hexdigest()


def _inputs(rows: list[list[float]]) -> list[UpdateInput]:
    return [UpdateInput(_h(i), {"x": torch.tensor(r)}, 10) for i, r in enumerate(rows)]


def _at(moved: list[float]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(global model, genesis model) with the global model ``moved`` away from genesis."""
    return {"x": torch.tensor(moved)}, {"x": torch.zeros(len(moved))}


# --- the rule ------------------------------------------------------------------------------------
def test_only_this_rule_needs_the_initial_model() -> None:
    assert rule_needs_initial_model("cosine_trajectory")
    assert not any(
        rule_needs_initial_model(r)
        for r in ("fedavg", "clipped", "median", "trimmed", "krum", "cosine")
    )


def test_in_the_first_round_it_is_cosine_over_the_updates_that_agree_with_the_median() -> None:
    rows = [[1.0, 0.1], [1.0, -0.1], [0.9, 0.0], [-0.5, 0.0]]
    r = aggregate(RULE, ZERO2, _inputs(rows))  # no initial model: as at genesis
    expected = aggregate(COSINE, ZERO2, _inputs(rows[:3]))
    assert r.included == expected.included == sorted(_h(i) for i in range(3))
    assert r.model_hash == expected.model_hash
    at_genesis = aggregate(RULE, ZERO2, _inputs(rows), initial_state=ZERO2)
    assert at_genesis.model_hash == r.model_hash


def test_an_update_that_pulls_back_toward_genesis_is_left_out() -> None:
    # the model has moved +x since genesis; this round the deltas disagree along x (non-IID
    # members near convergence) and the median is mostly y. u3 agrees with the median but
    # undoes the training along x: cosine trusts it, cosine_trajectory leaves it out
    rows = [[0.3, 1.0], [-0.1, 1.0], [0.2, 1.0], [-2.0, 1.0]]
    model, genesis = _at([5.0, 0.0])
    r = aggregate(RULE, model, _inputs(rows), initial_state=genesis)
    assert _h(3) in aggregate(COSINE, model, _inputs(rows)).included
    assert _h(3) not in r.included
    assert r.model_hash == aggregate(COSINE, model, _inputs(rows[:3])).model_hash
    # the same round at genesis: the direction is the median alone, and u3 agrees with it
    assert _h(3) in aggregate(RULE, model, _inputs(rows)).included


def test_when_no_update_agrees_it_falls_back_to_cosine_over_all() -> None:
    rows = [[-1.0, 0.0], [-0.5, 0.0]]
    model, genesis = _at([9.0, 0.0])
    r = aggregate(RULE, model, _inputs(rows), initial_state=genesis)
    assert r.model_hash == aggregate(COSINE, model, _inputs(rows)).model_hash


def test_an_empty_delta_never_agrees() -> None:
    model, genesis = _at([1.0, 0.0])
    rows = [[1.0, 0.0], [1.0, 0.1], [0.0, 0.0]]
    r = aggregate(RULE, model, _inputs(rows), initial_state=genesis)
    assert _h(2) not in r.included


def test_an_initial_model_of_another_shape_is_refused() -> None:
    with pytest.raises(ContractError) as info:
        aggregate(RULE, ZERO2, _inputs([[1.0, 0.0]]), initial_state={"x": torch.zeros(3)})
    assert info.value.reason == "wrong_shape"


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(1, 8), perm_seed=st.integers(0, 10_000))
def test_permuting_updates_never_changes_the_model(seed: int, n: int, perm_seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    inputs = [
        UpdateInput(_h(i), {"w": torch.randn(3, 4, generator=g) * 10.0 ** (i % 3 - 1)}, 5)
        for i in range(n)
    ]
    model = {"w": torch.randn(3, 4, generator=g)}
    genesis = {"w": torch.randn(3, 4, generator=g)}
    first = aggregate(RULE, model, inputs, initial_state=genesis)
    shuffled = list(inputs)
    random.Random(perm_seed).shuffle(shuffled)
    assert aggregate(RULE, model, shuffled, initial_state=genesis).model_hash == first.model_hash


# --- through the chain rules ----------------------------------------------------------------------
def _moved(c: Chain, before: str, after: str) -> float:
    old = decode_tensors(c.blobs.get(before), max_bytes=1 << 24)
    new = decode_tensors(c.blobs.get(after), max_bytes=1 << 24)
    name = sorted(new)[0]
    step = (new[name].double() - old[name].double()).flatten()
    assert torch.allclose(step, step[0].expand_as(step), atol=1e-7)
    return float(step[0])


def _updates(c: Chain, values: dict[str, float]) -> None:
    c.open_round()
    txs = []
    for name, value in values.items():
        txs += c.validated(c.update(name, delta(value)))
    c.commit(txs)


def test_the_chain_leaves_out_what_pulls_back_and_every_peer_agrees(tmp_path: Path) -> None:
    c = Chain(tmp_path, "cosine_trajectory")
    _updates(c, {"bob": 0.01, "carol": 0.02, "dave": 0.015})
    model, size = compute_aggregate(c.state, c.blobs)  # the proposer's path
    c.commit([c.aggregate_tx(model=model, size=size)])  # the chain rule recomputes it
    assert c.state.round.model == model
    # the model has moved ~+0.013 per weight. Round 2's median (-0.001) points back toward
    # genesis; judged by it alone (cosine), bob would get no trust and the model would move
    # back by (0.001 + 0.002) / 2. Along the trajectory only bob agrees, and the model moves
    # on by bob's delta
    before = c.state.round.model
    _updates(c, {"bob": 0.004, "carol": -0.001, "dave": -0.002})
    model, size = compute_aggregate(c.state, c.blobs)
    c.commit([c.aggregate_tx(model=model, size=size)])
    assert _moved(c, before, model) == pytest.approx(0.004, abs=1e-7)


def test_an_aggregate_computed_without_the_trajectory_breaks_the_block(tmp_path: Path) -> None:
    c = Chain(tmp_path, "cosine_trajectory")
    _updates(c, {"bob": 0.01, "carol": 0.02, "dave": 0.015})
    model, size = compute_aggregate(c.state, c.blobs)
    c.commit([c.aggregate_tx(model=model, size=size)])
    # a round where the median points back toward genesis: the direction (trajectory +
    # median) still points forward, so the two backward deltas are left out
    _updates(c, {"bob": 0.004, "carol": -0.001, "dave": -0.002})
    inputs = [
        UpdateInput(u.tx, decode_tensors(c.blobs.get(u.blob), max_bytes=1 << 24), u.num_samples)
        for u in c.state.round.accepted
    ]
    base = decode_tensors(c.blobs.get(c.state.round.base_model), max_bytes=1 << 24)
    right = aggregate(RULE, base, inputs, initial_state=initial_state(SPEC))
    assert right.model_hash == compute_aggregate(c.state, c.blobs)[0]
    naive = aggregate(RULE, base, inputs)  # as if at genesis: the median alone decides
    assert naive.model_hash != right.model_hash
    c.blobs.put(naive.model_bytes)
    with pytest.raises(VerificationError) as info:
        c.commit([c.aggregate_tx(model=naive.model_hash, size=len(naive.model_bytes))])
    assert "aggregate_mismatch" in info.value.message
