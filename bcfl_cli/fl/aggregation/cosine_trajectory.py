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

from bcfl_cli.fl.aggregation.base import register
from bcfl_cli.fl.aggregation.cosine import cosine_trust, measure
from bcfl_cli.fl.aggregation.stream import Plan, RoundTensors
from bcfl_cli.protocol.spec import AggregationSpec


class CosineTrajectory:
    name = "cosine_trajectory"
    needs_initial_model = True

    def plan(self, spec: AggregationSpec, tensors: RoundTensors) -> Plan:
        # One pass measures both the agreement with the direction and, for the case where
        # every update (or none) agrees, everything ``cosine`` needs over all of them.
        everyone = list(range(len(tensors.members)))
        geometry = measure(tensors, everyone, along=True)
        assert geometry.along is not None
        kept = [i for i, dot in zip(everyone, geometry.along, strict=True) if dot > 0.0]
        if kept and len(kept) < len(everyone):
            return cosine_trust(tensors, kept)
        return cosine_trust(tensors, everyone, geometry)


register(CosineTrajectory())
