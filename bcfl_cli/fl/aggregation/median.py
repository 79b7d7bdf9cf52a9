"""Coordinate-wise median (Yin et al., 2018): each weight moves by the median of the deltas.

Unweighted: a sample count is a claim, and weighting by it would let one member buy the
median. With an even count the two middle values are averaged ((a + b) * 0.5, exact order).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bcfl_cli.fl.aggregation.base import Combined, Prepared, register, sorted_stack
from bcfl_cli.protocol.spec import AggregationSpec


def coordinate_median(updates: Sequence[Prepared]) -> dict[str, torch.Tensor]:
    """The coordinate-wise median delta of ``updates`` (float64, the same bits everywhere)."""
    n = len(updates)
    delta = {}
    for name in sorted(updates[0].delta):
        ordered = sorted_stack(updates, name)
        if n % 2:
            delta[name] = ordered[n // 2].clone()
        else:
            delta[name] = (ordered[n // 2 - 1] + ordered[n // 2]) * 0.5
    return delta


class Median:
    name = "median"

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined:
        return Combined(coordinate_median(updates), [u.hash for u in updates])


register(Median())
