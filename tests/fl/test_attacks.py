"""Attack simulators: each does what the literature describes, deterministically."""

from __future__ import annotations

import math

import pytest
import torch

from bcfl_cli.fl import attacks


def _state(*values: float) -> dict[str, torch.Tensor]:
    return {"w": torch.tensor(values, dtype=torch.float32)}


HONEST = [_state(1.0, 0.0), _state(3.0, 2.0), _state(2.0, 4.0)]


def test_label_flip_reverses_the_classes() -> None:
    labels = torch.tensor([0, 1, 9, 4])
    flipped = attacks.label_flip(labels, 10)
    assert flipped.tolist() == [9, 8, 0, 5]
    assert flipped.dtype == torch.int64
    assert torch.equal(attacks.label_flip(flipped, 10), labels)


def test_sign_flip_and_scaling() -> None:
    d = _state(1.0, -2.0)
    assert attacks.sign_flip(d)["w"].tolist() == [-1.0, 2.0]
    assert attacks.sign_flip(d, 3.0)["w"].tolist() == [-3.0, 6.0]
    assert attacks.scaling(d, 10.0)["w"].tolist() == [10.0, -20.0]
    assert d["w"].tolist() == [1.0, -2.0]  # inputs are never modified


def test_gaussian_is_seeded_noise() -> None:
    d = {"w": torch.zeros(10_000)}
    a = attacks.gaussian(d, std=2.0, seed=1)
    b = attacks.gaussian(d, std=2.0, seed=1)
    assert torch.equal(a["w"], b["w"])
    assert float(a["w"].std()) == pytest.approx(2.0, rel=0.05)
    added = attacks.gaussian(_state(100.0), std=0.001, seed=2, additive=True)
    assert added["w"].item() == pytest.approx(100.0, abs=0.01)


def test_alie_z_follows_baruch() -> None:
    # n = 50, f = 24 gives s = 2 and z = Phi^-1(48/50) ~ 1.75 (Baruch et al., 2019, Table 1).
    assert attacks.alie_z(50, 24) == pytest.approx(1.75, abs=0.01)
    assert attacks.alie_z(10, 1) == 0.0  # s = 5: the attackers need no spread at all
    assert attacks.alie_z(10, 3) == pytest.approx(0.5244, abs=1e-3)
    assert attacks.alie_z(2, 5) == 0.0  # out of range clamps


def test_alie_moves_inside_the_honest_spread() -> None:
    out = attacks.alie(HONEST, n=10, f=3)["w"]
    mean = torch.tensor([2.0, 2.0])
    std = torch.stack([h["w"] for h in HONEST]).std(dim=0, correction=0)
    assert torch.allclose(out, mean - attacks.alie_z(10, 3) * std)
    assert torch.allclose(attacks.alie(HONEST, n=10, f=3, z=0.0)["w"], mean)


def test_ipm_points_against_the_honest_mean() -> None:
    out = attacks.ipm(HONEST, eps=0.5)["w"]
    assert out.tolist() == [-1.0, -1.0]
    mean = attacks.mean_delta(HONEST)["w"]
    assert float(torch.dot(out, mean)) < 0


def test_free_riders() -> None:
    zero = attacks.free_rider_zero(_state(1.0, 2.0))
    assert zero["w"].tolist() == [0.0, 0.0]
    prev = _state(0.5, 0.25)
    stale = attacks.free_rider_stale(prev)
    assert torch.equal(stale["w"], prev["w"]) and stale["w"] is not prev["w"]


def test_honest_helpers_need_honest_deltas() -> None:
    with pytest.raises(ValueError):
        attacks.mean_delta([])
    with pytest.raises(ValueError):
        attacks.alie([], n=10, f=3)


def test_outputs_are_float32() -> None:
    for out in (
        attacks.sign_flip(HONEST[0]),
        attacks.scaling(HONEST[0], 2.0),
        attacks.alie(HONEST, n=10, f=3),
        attacks.ipm(HONEST, eps=1.0),
        attacks.gaussian(HONEST[0], std=1.0, seed=0),
    ):
        assert out["w"].dtype == torch.float32
        assert all(math.isfinite(v) for v in out["w"].tolist())
