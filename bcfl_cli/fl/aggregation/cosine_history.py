"""Cosine trust among members whose record agrees with the consortium's direction.

``cosine`` judges each round alone, and one round is not always enough: near convergence on
non-IID data a member's honest delta mostly pulls toward its own classes, so an inner-product
manipulation (a member sending minus half of its own delta) can look as honest as anyone's,
and three such members of ten cost ``cosine`` 4.5 points over the network. What a round
cannot show, a member's record does: the sum of every delta it has had accepted, set against
the way the global model has moved since genesis, is strongly negative for a member that has
pushed against the consortium and positive for one that has pulled with it, whatever its
classes (every member shares the early rounds' common direction).

So, in hash order:

- the consortium's direction is the global model's movement since genesis plus this round's
  coordinate-wise median delta (in the first round, the median alone);
- a member *agrees* when its record plus this round's delta has a positive inner product with
  that direction (the exact ``numerics.dot``: the sign is the same on every peer);
- ``cosine`` then runs over the agreeing members' updates only (its median reference, norm
  clip and trust weights computed among them); if no member agrees, over all of them.

A member's record counts every update the chain accepted from it, aggregated or not, so a
member left out in one round is judged again on its whole record in the next. A member that
behaves for many rounds and then turns keeps a positive record for a while: until its record
turns, it is judged by ``cosine`` alone, as before. The rule reads the chain's history
(``bcfl_cli.fl.history``); without one it behaves as in a chain's first round.
"""

from __future__ import annotations

from collections.abc import Sequence

from bcfl_cli.fl.aggregation.base import Combined, Prepared, register
from bcfl_cli.fl.aggregation.cosine import cosine_trust
from bcfl_cli.fl.aggregation.median import coordinate_median
from bcfl_cli.fl.history import History
from bcfl_cli.fl.numerics import dot
from bcfl_cli.fl.spec import AggregationSpec


def agreeing(updates: Sequence[Prepared], history: History | None) -> list[Prepared]:
    """The updates whose author's record, this delta included, points the consortium's way."""
    direction = coordinate_median(updates)
    if history is not None:
        direction = {name: history.trajectory[name] + direction[name] for name in direction}
    kept = []
    for update in updates:
        record = update.delta
        held = history.contributions.get(update.author) if history is not None else None
        if held is not None:
            record = {name: held[name] + update.delta[name] for name in update.delta}
        if dot(record, direction) > 0.0:
            kept.append(update)
    return kept


class CosineHistory:
    name = "cosine_history"
    needs_history = True

    def combine(self, spec: AggregationSpec, updates: Sequence[Prepared]) -> Combined:
        return self.combine_with_history(spec, updates, None)

    def combine_with_history(
        self, spec: AggregationSpec, updates: Sequence[Prepared], history: History | None
    ) -> Combined:
        return cosine_trust(agreeing(updates, history) or updates)


register(CosineHistory())
