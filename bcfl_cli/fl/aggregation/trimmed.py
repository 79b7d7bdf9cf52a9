"""Coordinate-wise trimmed mean (Yin et al., 2018): drop the ``beta`` fraction at each end.

For every weight the k = floor(beta * n) largest and k smallest values are dropped and the
rest averaged (unweighted, like the median). k is computed from beta's decimal string with
integer arithmetic, so 0.29 * 100 is 29 on every peer, not 28.999999999999996.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from bcfl_cli.fl.aggregation.base import (
    Combined,
    Prepared,
    decimal,
    ordered_sum,
    register,
    sorted_stack,
)
from bcfl_cli.protocol.spec import AggregationSpec


def trim_count(beta: float, n: int) -> int:
    """Values cut at each end; always leaves at least one value."""
    k = int(Decimal(decimal(beta)) * n)
    return min(k, (n - 1) // 2)


class Trimmed:
    name = "trimmed"

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined:
        n = len(updates)
        k = trim_count(spec.trim_beta, n)
        delta = {}
        for name in sorted(updates[0].delta):
            kept = sorted_stack(updates, name)[k : n - k]
            delta[name] = ordered_sum(kept) / float(n - 2 * k)
        return Combined(delta, [u.hash for u in updates])


register(Trimmed())
