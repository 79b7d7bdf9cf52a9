"""Norm-clipped FedAvg: each delta is scaled down to at most ``clip_norm``, then averaged.

Bounds what one member can move the model by (scaling attacks), at no cost to honest deltas
whose norm stays below the bound. The norm is the exact one of ``numerics`` and the scale a
single IEEE division, so every peer clips by the same factor.
"""

from __future__ import annotations

from collections.abc import Sequence

from bcfl_cli.fl.aggregation.base import (
    Combined,
    Prepared,
    register,
    weighted_mean,
)
from bcfl_cli.fl.numerics import l2_norm
from bcfl_cli.protocol.spec import AggregationSpec


def clip(update: Prepared, clip_norm: float) -> Prepared:
    """``update`` scaled by min(1, clip_norm / ||delta||) (unchanged when already inside)."""
    norm = l2_norm(update.delta)
    if norm <= clip_norm:
        return update
    scale = clip_norm / norm
    delta = {k: v * scale for k, v in update.delta.items()}
    return Prepared(update.hash, delta, update.num_samples)


class Clipped:
    name = "clipped"

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined:
        clipped = [clip(u, spec.clip_norm) for u in updates]
        names = sorted(updates[0].delta)
        return Combined(weighted_mean(clipped, names), [u.hash for u in updates])


register(Clipped())
