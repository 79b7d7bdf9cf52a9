"""Cosine trust among the updates that pull the model the way the consortium has moved it.

``cosine`` judges each round against the round's own median, and that is not always enough:
near convergence on non-IID data a member's honest delta mostly pulls toward its own classes,
so the round's deltas disagree with each other and an inner-product manipulation (a member
sending minus half of its own delta) can look as honest as anyone's; three such members of ten
cost ``cosine`` 4.5 points over the network. What one round cannot show, the chain can: the
global model's movement since genesis is the consortium's long-run direction, and an update
that pushes the model back toward where it started works against every member.

So, in hash order:

- the direction is the global model minus the genesis model, plus this round's coordinate-wise
  median delta (in the first round the median alone, as in ``cosine``);
- an update *agrees* when its inner product with that direction is positive (the exact
  ``numerics.dot``, so the sign is the same on every peer);
- ``cosine`` then runs over the agreeing updates only (its median reference, norm clip and
  trust weights computed among them); if none agrees, over all of them.

The rule reads nothing but the round's updates, the round's base model and the genesis model,
so it keeps no state between rounds and every peer, restarted or not, recomputes it from the
chain. It is a defence against updates that undo training, not against every attack: an
attacker that knows the direction can add enough of it to agree, and is then judged by
``cosine`` alone, as before.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from bcfl_cli.fl.aggregation.base import Combined, Prepared, register
from bcfl_cli.fl.aggregation.cosine import cosine_trust
from bcfl_cli.fl.aggregation.median import coordinate_median
from bcfl_cli.fl.numerics import dot
from bcfl_cli.protocol.spec import AggregationSpec


def agreeing(
    updates: Sequence[Prepared],
    trajectory: dict[str, torch.Tensor] | None,
    median: dict[str, torch.Tensor],
) -> list[Prepared]:
    """The updates whose delta has a positive inner product with the consortium's direction
    (``median`` is the coordinate-wise median of ``updates``)."""
    direction = median
    if trajectory is not None:
        direction = {name: trajectory[name] + median[name] for name in median}
    return [u for u in updates if dot(u.delta, direction) > 0.0]


class CosineTrajectory:
    name = "cosine_trajectory"
    needs_initial_model = True

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined:
        return self.combine_along(spec, updates, None)

    def combine_along(
        self,
        spec: AggregationSpec,
        updates: Sequence[Prepared],
        trajectory: dict[str, torch.Tensor] | None,
    ) -> Combined:
        median = coordinate_median(updates)
        kept = agreeing(updates, trajectory, median)
        if kept and len(kept) < len(updates):
            return cosine_trust(kept)
        return cosine_trust(updates, median)  # all agree, or none: the median is already known


register(CosineTrajectory())
