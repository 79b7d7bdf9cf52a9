"""Multi-Krum (Blanchard et al., 2017): average the m deltas closest to their neighbours.

Each delta scores the sum of its squared distances to its n - f - 2 nearest others; the m
lowest scores are kept (ties broken by update hash) and averaged by sample count, as in
Flower's implementation. Distances are exact (``numerics``: accumulated tensor by tensor in
one streaming pass, rounded once), so a near tie selects the same updates on every peer. With
fewer than f + 3 updates Krum's bound cannot hold; the rule then still scores against at least
one neighbour, so it degrades to "keep the most central ones".
"""

from __future__ import annotations

import math

from bcfl_cli.fl.aggregation.base import register
from bcfl_cli.fl.aggregation.fedavg import weighted_mean_plan
from bcfl_cli.fl.aggregation.stream import Plan, RoundTensors
from bcfl_cli.fl.numerics import ExactSum
from bcfl_cli.protocol.spec import AggregationSpec


def squared_distances(tensors: RoundTensors) -> list[list[float]]:
    """The exact pairwise squared distances of the updates (hash order): one pass."""
    n = len(tensors.members)
    sums = {(i, j): ExactSum() for i in range(n) for j in range(i + 1, n)}
    for name in tensors.names:
        for part in tensors.parts(name):
            rows = tensors.rows(name, part)
            for (i, j), acc in sums.items():
                acc.add_squares((rows[i] - rows[j]).numpy())
    tensors.release()
    dist = [[0.0] * n for _ in range(n)]
    for (i, j), acc in sums.items():
        dist[i][j] = dist[j][i] = acc.value()
    return dist


def krum_scores(tensors: RoundTensors, f: int) -> list[float]:
    """Krum score of each update (hash order)."""
    n = len(tensors.members)
    if n == 1:
        return [0.0]
    dist = squared_distances(tensors)
    neighbours = max(n - f - 2, 1)
    scores = []
    for i in range(n):
        others = sorted(dist[i][j] for j in range(n) if j != i)
        scores.append(math.fsum(others[:neighbours]))
    return scores


def select(tensors: RoundTensors, f: int, m: int) -> list[int]:
    """The indices of the ``m`` best-scored updates, in hash order."""
    scores = krum_scores(tensors, f)
    members = tensors.members
    ranked = sorted(range(len(members)), key=lambda i: (scores[i], members[i].hash))
    return sorted(ranked[: min(m, len(members))])


class Krum:
    name = "krum"

    def plan(self, spec: AggregationSpec, tensors: RoundTensors) -> Plan:
        return weighted_mean_plan(tensors, select(tensors, spec.krum_f, spec.krum_m))


register(Krum())
