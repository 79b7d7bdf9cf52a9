"""Norm-clipped FedAvg: each delta is scaled down to at most ``clip_norm``, then averaged.

Bounds what one member can move the model by (scaling attacks), at no cost to honest deltas
whose norm stays below the bound. The norm is the exact one of ``numerics`` (accumulated
tensor by tensor in a first pass, rounded once) and the scale a single IEEE division, so every
peer clips by the same factor.
"""

from __future__ import annotations

import math

from bcfl_cli.fl.aggregation.base import register
from bcfl_cli.fl.aggregation.fedavg import weighted_mean_plan
from bcfl_cli.fl.aggregation.stream import Plan, RoundTensors, exact_sums
from bcfl_cli.protocol.spec import AggregationSpec


def norms(tensors: RoundTensors) -> list[float]:
    """Each update's L2 norm over all its tensors (hash order): one streaming pass."""
    sums = exact_sums(len(tensors.members))
    for name in tensors.names:
        for part in tensors.parts(name):
            for acc, row in zip(sums, tensors.rows(name, part), strict=True):
                acc.add_squares(row.numpy())
    tensors.release()
    return [math.sqrt(acc.value()) for acc in sums]


def clip_scale(norm: float, clip_norm: float) -> float | None:
    """min(1, clip_norm / norm) as the factor to apply, None when the delta is inside."""
    return None if norm <= clip_norm else clip_norm / norm


class Clipped:
    name = "clipped"

    def plan(self, spec: AggregationSpec, tensors: RoundTensors) -> Plan:
        scales = [clip_scale(norm, spec.clip_norm) for norm in norms(tensors)]
        return weighted_mean_plan(tensors, range(len(tensors.members)), scales)


register(Clipped())
