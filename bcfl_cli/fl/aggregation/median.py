"""Coordinate-wise median (Yin et al., 2018): each weight moves by the median of the deltas.

Unweighted: a sample count is a claim, and weighting by it would let one member buy the
median. With an even count the two middle values are averaged ((a + b) * 0.5, exact order).
"""

from __future__ import annotations

import torch

from bcfl_cli.fl.aggregation.base import register
from bcfl_cli.fl.aggregation.stream import Plan, RoundTensors, median_of
from bcfl_cli.protocol.spec import AggregationSpec


class Median:
    name = "median"

    def plan(self, spec: AggregationSpec, tensors: RoundTensors) -> Plan:
        def delta(name: str, part: slice) -> torch.Tensor:
            return median_of(tensors.rows(name, part))

        return Plan([m.hash for m in tensors.members], delta)


register(Median())
