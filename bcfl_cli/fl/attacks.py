"""Simulated attackers, for tests and the accuracy benchmark (never used by a real member).

Each attack is a pure function. Data poisoning transforms the attacker's labels before honest
local training; model poisoning transforms the delta that local training produced, some with
knowledge of the honest deltas of the round (the strongest, omniscient attacker of the
literature). All take and return float32 state dicts keyed like the model.

- ``label_flip``: y -> C - 1 - y (Fang et al., 2020 and many others);
- ``sign_flip``: -k * delta; ``scaling``: factor * delta (model replacement, Bagdasaryan et al.);
- ``gaussian``: an update of pure N(0, std^2) noise (the "Gaussian attack"), or noise added;
- ``alie``: "a little is enough" (Baruch et al., 2019): mean - z * std of the honest deltas,
  coordinate-wise, with z chosen from n and f so the result hides inside the honest spread;
- ``ipm``: inner product manipulation (Xie et al., 2020): -eps * mean of the honest deltas;
- ``free_rider_zero`` / ``free_rider_stale``: contribute nothing, or last round's delta.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from statistics import NormalDist

import torch

State = Mapping[str, torch.Tensor]


def label_flip(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Every label y becomes C - 1 - y (a fixed permutation of the classes)."""
    return (num_classes - 1 - labels).to(labels.dtype)


def sign_flip(delta: State, k: float = 1.0) -> dict[str, torch.Tensor]:
    """The delta reversed and scaled: pushes the model up the loss instead of down."""
    return {name: (t * -k).to(torch.float32) for name, t in delta.items()}


def scaling(delta: State, factor: float) -> dict[str, torch.Tensor]:
    """The delta boosted by ``factor``: one member outweighs all others under FedAvg."""
    return {name: (t * factor).to(torch.float32) for name, t in delta.items()}


def gaussian(
    delta: State, *, std: float, seed: int, additive: bool = False
) -> dict[str, torch.Tensor]:
    """N(0, std^2) noise in place of the delta (or added to it with ``additive``)."""
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for name in sorted(delta):
        noise = torch.randn(delta[name].shape, generator=generator, dtype=torch.float32) * std
        out[name] = delta[name].to(torch.float32) + noise if additive else noise
    return out


def _stack(honest: Sequence[State], name: str) -> torch.Tensor:
    return torch.stack([h[name].to(torch.float64) for h in honest], dim=0)


def mean_delta(honest: Sequence[State]) -> dict[str, torch.Tensor]:
    """Coordinate-wise mean of ``honest`` (simulation only, not the consensus arithmetic)."""
    if not honest:
        raise ValueError("needs at least one honest delta")
    return {name: _stack(honest, name).mean(dim=0).to(torch.float32) for name in honest[0]}


def alie_z(n: int, f: int) -> float:
    """Baruch et al.'s z_max: s = floor(n/2 + 1) - f supporters needed, z = Phi^-1((n-s)/n)."""
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if not 0.0 < p < 1.0:
        return 0.0
    return NormalDist().inv_cdf(p)


def alie(
    honest: Sequence[State], *, n: int, f: int, z: float | None = None
) -> dict[str, torch.Tensor]:
    """mean - z * std of the honest deltas, per coordinate (every attacker sends the same)."""
    if not honest:
        raise ValueError("needs at least one honest delta")
    zz = alie_z(n, f) if z is None else z
    out = {}
    for name in honest[0]:
        stacked = _stack(honest, name)
        std = stacked.std(dim=0, correction=0)
        out[name] = (stacked.mean(dim=0) - zz * std).to(torch.float32)
    return out


def ipm(honest: Sequence[State], *, eps: float) -> dict[str, torch.Tensor]:
    """-eps * the honest mean: with eps small it hides among honest deltas, still harmful."""
    return {name: (t * -eps).to(torch.float32) for name, t in mean_delta(honest).items()}


def free_rider_zero(template: State) -> dict[str, torch.Tensor]:
    """An all-zero delta: claims a reward without training."""
    return {name: torch.zeros_like(t, dtype=torch.float32) for name, t in template.items()}


def free_rider_stale(previous: State) -> dict[str, torch.Tensor]:
    """Last round's (e.g. the previous aggregate's) delta resubmitted without training."""
    return {name: t.to(torch.float32).clone() for name, t in previous.items()}
