"""FedAvg (McMahan et al., 2017): the sample-weighted mean of all accepted deltas.

Not robust: one attacker that scales its delta moves the model as far as it likes.
"""

from __future__ import annotations

from collections.abc import Sequence

from bcfl_cli.fl.aggregation.base import Combined, Prepared, register, weighted_mean
from bcfl_cli.protocol.spec import AggregationSpec


class FedAvg:
    name = "fedavg"

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined:
        names = sorted(updates[0].delta)
        return Combined(weighted_mean(updates, names), [u.hash for u in updates])


register(FedAvg())
