"""Cosine trust: FLTrust's scoring (Cao et al., NDSS 2021) against the coordinate-wise median.

FLTrust scores each update by ReLU(cosine) with a reference update that the server computes on
a small trusted dataset. A consortium has no such dataset (nobody's data leaves its owner), so
the reference here is the coordinate-wise median of the round's deltas, which fewer than half
of the members cannot drag far. Then, in hash order:

- ``trust_i = max(0, cos(delta_i, median))``: a delta pointing away from the median (a sign
  flip, an inner-product manipulation) or carrying nothing (a free rider's zeros) gets 0;
- each delta is clipped to the median of the deltas' norms (a data-derived bound, so a boost
  that passes the contract's norm bound still counts no more than a typical honest delta);
- the new delta is ``sum(trust_i * clipped_i) / sum(trust_i)``, unweighted by sample counts (a
  count is a claim; weighting by it would let one member buy trust).

If every update scores 0 the round moves by the median itself. Norms and inner products are the
exact ones of ``numerics`` (accumulated tensor by tensor in one streaming pass, rounded once)
and the sum runs update by update in hash order, so every peer gets the same bits. The rule has
no parameter; the aggregate records the whole aggregation section.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from bcfl_cli.fl.aggregation.base import register
from bcfl_cli.fl.aggregation.stream import Plan, RoundTensors, exact_sums, median_of
from bcfl_cli.fl.numerics import ExactSum
from bcfl_cli.protocol.spec import AggregationSpec


@dataclass(frozen=True)
class Geometry:
    """What one pass over a subset of the updates measured, against its coordinate median."""

    norms: list[float]  # each update's L2 norm
    reference_norm: float  # the median's
    dots: list[float]  # each update's inner product with the median
    along: list[float] | None  # each update's inner product with median + trajectory


def measure(tensors: RoundTensors, which: Sequence[int], *, along: bool = False) -> Geometry:
    """One streaming pass over the updates ``which``: norms, the median's norm, inner products
    with the median and (``along``) with the median plus the trajectory since genesis."""
    n = len(which)
    squares, dots, directed = exact_sums(n), exact_sums(n), exact_sums(n)
    reference = ExactSum()
    for name in tensors.names:
        for part in tensors.parts(name):
            rows = tensors.rows(name, part, which)
            median = median_of(rows)
            reference.add_squares(median.numpy())
            direction = None
            if along:
                trajectory = tensors.trajectory(name, part)
                direction = median if trajectory is None else trajectory + median
            for i, row in enumerate(rows):
                values = row.numpy()
                squares[i].add_squares(values)
                dots[i].add_products(values, median.numpy())
                if direction is not None:
                    directed[i].add_products(values, direction.numpy())
    tensors.release()
    return Geometry(
        [math.sqrt(s.value()) for s in squares],
        math.sqrt(reference.value()),
        [d.value() for d in dots],
        [d.value() for d in directed] if along else None,
    )


def trust_scores(geometry: Geometry) -> list[float]:
    """Each update's trust: ReLU of its cosine to the median (0 for a zero vector)."""
    scores = []
    for dot, norm in zip(geometry.dots, geometry.norms, strict=True):
        if norm == 0.0 or geometry.reference_norm == 0.0:
            scores.append(0.0)
            continue
        cosine = dot / (norm * geometry.reference_norm)
        scores.append(max(0.0, cosine))
    return scores


def median_norm(norms: Sequence[float]) -> float:
    """The lower median of ``norms`` (an element of the list, never an average)."""
    ordered = sorted(norms)
    return ordered[(len(ordered) - 1) // 2]


def cosine_trust(
    tensors: RoundTensors, which: Sequence[int], geometry: Geometry | None = None
) -> Plan:
    """The whole rule over the updates ``which`` (hash order); ``cosine_trajectory`` runs it
    on a subset. ``geometry``: ``measure`` of exactly ``which``, when the caller has it."""
    which = list(which)
    if geometry is None:
        geometry = measure(tensors, which)
    members = [tensors.members[i] for i in which]
    scores = trust_scores(geometry)
    total = sum(scores)  # left to right in hash order: the same float everywhere
    if total == 0.0:

        def median(name: str, part: slice) -> torch.Tensor:
            return median_of(tensors.rows(name, part, which))

        return Plan([m.hash for m in members], median)
    bound = median_norm(geometry.norms)
    coefficients = [
        score * min(1.0, bound / norm) if score > 0.0 else 0.0
        for score, norm in zip(scores, geometry.norms, strict=True)
    ]
    trusted = [i for i, c in zip(which, coefficients, strict=True) if c > 0.0]
    weights = [c for c in coefficients if c > 0.0]

    def delta(name: str, part: slice) -> torch.Tensor:
        acc = torch.zeros(part.stop - part.start, dtype=torch.float64)
        for row, coefficient in zip(tensors.rows(name, part, trusted), weights, strict=True):
            acc = acc + row * coefficient
        return acc / total

    return Plan([m.hash for m, s in zip(members, scores, strict=True) if s > 0.0], delta)


class CosineTrust:
    name = "cosine"

    def plan(self, spec: AggregationSpec, tensors: RoundTensors) -> Plan:
        return cosine_trust(tensors, range(len(tensors.members)))


register(CosineTrust())
