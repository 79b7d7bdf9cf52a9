"""Multi-Krum (Blanchard et al., 2017): average the m deltas closest to their neighbours.

Each delta scores the sum of its squared distances to its n - f - 2 nearest others; the m
lowest scores are kept (ties broken by update hash) and averaged by sample count, as in
Flower's implementation. Distances are exact (``numerics``), so a near tie selects the same
updates on every peer. With fewer than f + 3 updates Krum's bound cannot hold; the rule then
still scores against at least one neighbour, so it degrades to "keep the most central ones".
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from bcfl_cli.fl.aggregation.base import Combined, Prepared, register, weighted_mean
from bcfl_cli.fl.numerics import flat_float64, squared_distance_flat
from bcfl_cli.protocol.spec import AggregationSpec


def krum_scores(updates: Sequence[Prepared], f: int) -> list[float]:
    """Krum score of each update (same order as ``updates``)."""
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


def select(updates: Sequence[Prepared], f: int, m: int) -> list[Prepared]:
    """The ``m`` best-scored updates, in hash order."""
    scores = krum_scores(updates, f)
    ranked = sorted(range(len(updates)), key=lambda i: (scores[i], updates[i].hash))
    keep = sorted(ranked[: min(m, len(updates))])
    return [updates[i] for i in keep]


class Krum:
    name = "krum"

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined:
        chosen = select(updates, spec.krum_f, spec.krum_m)
        names = sorted(updates[0].delta)
        return Combined(weighted_mean(chosen, names), [u.hash for u in chosen])


register(Krum())
