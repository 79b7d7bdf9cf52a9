"""FedAvg (McMahan et al., 2017): the sample-weighted mean of all accepted deltas.

Not robust: one attacker that scales its delta moves the model as far as it likes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bcfl_cli.fl.aggregation.base import register
from bcfl_cli.fl.aggregation.stream import Member, Plan, RoundTensors, weighted
from bcfl_cli.protocol.spec import AggregationSpec


def weighted_mean_plan(
    tensors: RoundTensors,
    chosen: Sequence[int],
    scales: Sequence[float | None] | None = None,
) -> Plan:
    """The sample-weighted mean of the updates ``chosen`` (indices, hash order).

    ``n_i * d_i`` is exact for float32-valued deltas and n_i < 2**29; the sum is rounded, but
    always in the same order, so it is the same everywhere. ``scales`` (one per chosen update,
    None for 1) multiplies a delta first, as clipping does.
    """
    members: list[Member] = [tensors.members[i] for i in chosen]
    total = float(sum(m.num_samples for m in members))
    weights = [float(m.num_samples) for m in members]

    def delta(name: str, part: slice) -> torch.Tensor:
        rows = tensors.rows(name, part, chosen)
        if scales is not None:
            rows = [row if s is None else row * s for row, s in zip(rows, scales, strict=True)]
        return weighted(rows, weights, total)

    return Plan([m.hash for m in members], delta)


class FedAvg:
    name = "fedavg"

    def plan(self, spec: AggregationSpec, tensors: RoundTensors) -> Plan:
        return weighted_mean_plan(tensors, range(len(tensors.members)))


register(FedAvg())
