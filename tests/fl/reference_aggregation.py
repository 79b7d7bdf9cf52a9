"""The aggregation rules as they were before streaming (issue 19): the oracle for the tests.

A frozen, whole-state copy of ``fl/aggregation`` at 4a649b7 (every update widened to float64
at once, the result built in memory and encoded by ``encode_tensors``). The streaming engine
must give the same bytes for every rule; tests/fl/test_streaming_aggregation.py compares them.
Only the arithmetic is kept: the checks of the inputs are the engine's own tests' business.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

import torch

from bcfl_cli.fl.numerics import dot, flat_float64, l2_norm, squared_distance_flat
from bcfl_cli.fl.tensors import encode_tensors
from bcfl_cli.protocol.spec import AggregationSpec

State = Mapping[str, torch.Tensor]


@dataclass(frozen=True)
class Prepared:
    hash: str
    delta: dict[str, torch.Tensor]
    num_samples: int


def to_float64(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to("cpu", torch.float64) + 0.0


def weighted_mean(updates: Sequence[Prepared], names: Sequence[str]) -> dict[str, torch.Tensor]:
    total = sum(u.num_samples for u in updates)
    out = {}
    for name in names:
        acc = torch.zeros_like(updates[0].delta[name])
        for u in updates:
            term = u.delta[name] * float(u.num_samples)
            acc = acc + term
        out[name] = acc / float(total)
    return out


def ordered_sum(rows: torch.Tensor) -> torch.Tensor:
    acc = torch.zeros_like(rows[0])
    for row in rows:
        acc = acc + row
    return acc


def sorted_stack(updates: Sequence[Prepared], name: str) -> torch.Tensor:
    stacked = torch.stack([u.delta[name] for u in updates], dim=0)
    return torch.sort(stacked, dim=0, stable=True).values


def coordinate_median(updates: Sequence[Prepared]) -> dict[str, torch.Tensor]:
    n = len(updates)
    delta = {}
    for name in sorted(updates[0].delta):
        ordered = sorted_stack(updates, name)
        if n % 2:
            delta[name] = ordered[n // 2].clone()
        else:
            delta[name] = (ordered[n // 2 - 1] + ordered[n // 2]) * 0.5
    return delta


def trimmed(spec: AggregationSpec, updates: Sequence[Prepared]) -> tuple[dict, list[str]]:
    n = len(updates)
    k = min(int(Decimal(repr(float(spec.trim_beta))) * n), (n - 1) // 2)
    delta = {}
    for name in sorted(updates[0].delta):
        kept = sorted_stack(updates, name)[k : n - k]
        delta[name] = ordered_sum(kept) / float(n - 2 * k)
    return delta, [u.hash for u in updates]


def clip(update: Prepared, clip_norm: float) -> Prepared:
    norm = l2_norm(update.delta)
    if norm <= clip_norm:
        return update
    scale = clip_norm / norm
    return Prepared(
        update.hash, {k: v * scale for k, v in update.delta.items()}, update.num_samples
    )


def krum_scores(updates: Sequence[Prepared], f: int) -> list[float]:
    n = len(updates)
    if n == 1:
        return [0.0]
    flat = [flat_float64(u.delta) for u in updates]
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            dist[i][j] = dist[j][i] = squared_distance_flat(flat[i], flat[j])
    neighbours = max(n - f - 2, 1)
    scores = []
    for i in range(n):
        others = sorted(dist[i][j] for j in range(n) if j != i)
        scores.append(math.fsum(others[:neighbours]))
    return scores


def krum(spec: AggregationSpec, updates: Sequence[Prepared]) -> tuple[dict, list[str]]:
    scores = krum_scores(updates, spec.krum_f)
    ranked = sorted(range(len(updates)), key=lambda i: (scores[i], updates[i].hash))
    chosen = [updates[i] for i in sorted(ranked[: min(spec.krum_m, len(updates))])]
    return weighted_mean(chosen, sorted(updates[0].delta)), [u.hash for u in chosen]


def cosine_trust(
    updates: Sequence[Prepared], median: dict[str, torch.Tensor] | None = None
) -> tuple[dict, list[str]]:
    reference = coordinate_median(updates) if median is None else median
    reference_norm = l2_norm(reference)
    norms = [l2_norm(u.delta) for u in updates]
    scores = []
    for update, norm in zip(updates, norms, strict=True):
        if norm == 0.0 or reference_norm == 0.0:
            scores.append(0.0)
            continue
        scores.append(max(0.0, dot(update.delta, reference) / (norm * reference_norm)))
    total = sum(scores)
    if total == 0.0:
        return reference, [u.hash for u in updates]
    bound = sorted(norms)[(len(norms) - 1) // 2]
    coefficients = [
        score * min(1.0, bound / norm) if score > 0.0 else 0.0
        for score, norm in zip(scores, norms, strict=True)
    ]
    delta = {}
    for name in sorted(reference):
        acc = torch.zeros_like(reference[name])
        for update, coefficient in zip(updates, coefficients, strict=True):
            if coefficient > 0.0:
                acc = acc + update.delta[name] * coefficient
        delta[name] = acc / total
    return delta, [u.hash for u, s in zip(updates, scores, strict=True) if s > 0.0]


def cosine_trajectory(
    updates: Sequence[Prepared], trajectory: dict[str, torch.Tensor] | None
) -> tuple[dict, list[str]]:
    median = coordinate_median(updates)
    direction = median
    if trajectory is not None:
        direction = {name: trajectory[name] + median[name] for name in median}
    kept = [u for u in updates if dot(u.delta, direction) > 0.0]
    if kept and len(kept) < len(updates):
        return cosine_trust(kept)
    return cosine_trust(updates, median)


def reference_model_bytes(
    spec: AggregationSpec,
    global_state: State,
    updates: Sequence[tuple[str, State, int]],
    initial_state: State | None = None,
) -> tuple[bytes, list[str]]:
    """The aggregate's safetensors bytes and the included hashes, as bcfl computed them."""
    prepared = [
        Prepared(h, {k: to_float64(d[k]) for k in sorted(d)}, n)
        for h, d, n in sorted(updates, key=lambda u: u[0])
    ]
    names = sorted(global_state)
    if spec.rule == "fedavg":
        delta, included = weighted_mean(prepared, names), [u.hash for u in prepared]
    elif spec.rule == "clipped":
        clipped = [clip(u, spec.clip_norm) for u in prepared]
        delta, included = weighted_mean(clipped, names), [u.hash for u in prepared]
    elif spec.rule == "median":
        delta, included = coordinate_median(prepared), [u.hash for u in prepared]
    elif spec.rule == "trimmed":
        delta, included = trimmed(spec, prepared)
    elif spec.rule == "krum":
        delta, included = krum(spec, prepared)
    elif spec.rule == "cosine":
        delta, included = cosine_trust(prepared)
    elif spec.rule == "cosine_trajectory":
        trajectory = None
        if initial_state is not None:
            trajectory = {
                k: to_float64(global_state[k]) - to_float64(initial_state[k]) for k in names
            }
        delta, included = cosine_trajectory(prepared, trajectory)
    else:
        raise ValueError(f"no reference for rule {spec.rule!r}")
    new_state = {}
    for name in names:
        base = global_state[name].detach().to("cpu", torch.float64)
        new_state[name] = (base + delta[name]).to(torch.float32).contiguous()
    return encode_tensors(new_state), included
