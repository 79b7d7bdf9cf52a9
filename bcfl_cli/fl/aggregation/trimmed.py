"""Coordinate-wise trimmed mean (Yin et al., 2018): drop the ``beta`` fraction at each end.

For every weight the k = floor(beta * n) largest and k smallest values are dropped and the
rest averaged (unweighted, like the median). k is computed from beta's decimal string with
integer arithmetic, so 0.29 * 100 is 29 on every peer, not 28.999999999999996.
"""

from __future__ import annotations

from decimal import Decimal

import torch

from bcfl_cli.fl.aggregation.base import decimal, ordered_sum, register
from bcfl_cli.fl.aggregation.stream import Plan, RoundTensors, sorted_rows
from bcfl_cli.protocol.spec import AggregationSpec


def trim_count(beta: float, n: int) -> int:
    """Values cut at each end; always leaves at least one value."""
    k = int(Decimal(decimal(beta)) * n)
    return min(k, (n - 1) // 2)


class Trimmed:
    name = "trimmed"

    def plan(self, spec: AggregationSpec, tensors: RoundTensors) -> Plan:
        n = len(tensors.members)
        k = trim_count(spec.trim_beta, n)

        def delta(name: str, part: slice) -> torch.Tensor:
            kept = sorted_rows(tensors.rows(name, part))[k : n - k]
            return ordered_sum(kept) / float(n - 2 * k)

        return Plan([m.hash for m in tensors.members], delta)


register(Trimmed())
