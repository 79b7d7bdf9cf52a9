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
exact ones of ``numerics`` and the sum runs update by update in hash order, so every peer gets
the same bits. The rule has no parameter; the aggregate records the whole aggregation section.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bcfl_cli.fl.aggregation.base import Combined, Prepared, register
from bcfl_cli.fl.aggregation.median import coordinate_median
from bcfl_cli.fl.numerics import dot, l2_norm
from bcfl_cli.protocol.spec import AggregationSpec


def trust_scores(
    updates: Sequence[Prepared], reference: dict[str, torch.Tensor]
) -> tuple[list[float], list[float]]:
    """Each update's trust (ReLU of its cosine to ``reference``) and its L2 norm."""
    reference_norm = l2_norm(reference)
    norms = [l2_norm(u.delta) for u in updates]
    scores = []
    for update, norm in zip(updates, norms, strict=True):
        if norm == 0.0 or reference_norm == 0.0:
            scores.append(0.0)
            continue
        cosine = dot(update.delta, reference) / (norm * reference_norm)
        scores.append(max(0.0, cosine))
    return scores, norms


def median_norm(norms: Sequence[float]) -> float:
    """The lower median of ``norms`` (an element of the list, never an average)."""
    ordered = sorted(norms)
    return ordered[(len(ordered) - 1) // 2]


def cosine_trust(
    updates: Sequence[Prepared], median: dict[str, torch.Tensor] | None = None
) -> Combined:
    """The whole rule over ``updates`` (hash order); ``cosine_trajectory`` runs it on a subset.

    ``median``: the coordinate-wise median of exactly ``updates``, when the caller has it.
    """
    reference = coordinate_median(updates) if median is None else median
    scores, norms = trust_scores(updates, reference)
    total = sum(scores)  # left to right in hash order: the same float everywhere
    if total == 0.0:
        return Combined(reference, [u.hash for u in updates])
    bound = median_norm(norms)
    coefficients = [
        score * min(1.0, bound / norm) if score > 0.0 else 0.0
        for score, norm in zip(scores, norms, strict=True)
    ]
    delta = {}
    for name in sorted(reference):
        acc = torch.zeros_like(reference[name])
        for update, coefficient in zip(updates, coefficients, strict=True):
            if coefficient > 0.0:
                acc = acc + update.delta[name] * coefficient
        delta[name] = acc / total
    included = [u.hash for u, s in zip(updates, scores, strict=True) if s > 0.0]
    return Combined(delta, included)


class CosineTrust:
    name = "cosine"

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined:
        return cosine_trust(updates)


register(CosineTrust())
