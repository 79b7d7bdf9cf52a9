"""Each member's cumulative contribution, for rules that judge a member by its record.

``cosine_history`` compares the sum of every delta a member has had accepted with the way the
global model has moved since genesis. Both are functions of the chain alone (the accepted
updates of closed rounds, ``ChainState.closed_rounds``, and their blobs), so every peer and
``verify-chain --deep`` derive the same bits: deltas are widened to float64 and added round
by round, oldest first, one member at a time.

The sums are kept incrementally: a state one round past the cached one adds that round's
deltas; any other state (a restart, a deep verification from genesis, a proposal that never
committed) is rebuilt from its blobs.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from bcfl_cli.fl.aggregation.base import to_float64

if TYPE_CHECKING:
    from bcfl_cli.chain.state import ChainState, ClosedRound

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class History:
    """What a history-aware rule reads besides the round's updates (all float64).

    ``contributions``: member did -> the sum of its accepted deltas in closed rounds;
    ``trajectory``: the round's base model minus the genesis model.
    """

    contributions: Mapping[str, Tensors]
    trajectory: Tensors


def trajectory(base: Mapping[str, torch.Tensor], initial: Mapping[str, torch.Tensor]) -> Tensors:
    """``base - initial`` in float64 (exact for float32 models), keyed like the model."""
    return {name: to_float64(base[name]) - to_float64(initial[name]) for name in sorted(base)}


#: Blob hash -> its decoded tensors (raising if the blob is missing or unreadable).
Loader = Callable[[str], Mapping[str, torch.Tensor]]


class MemberHistory:
    """Cumulative accepted deltas per member, cached across rounds; safe across threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._key: tuple[int, tuple[str, ...]] | None = None
        self._sums: dict[str, Tensors] = {}
        self._initial: tuple[str, Mapping[str, torch.Tensor]] | None = None

    def history(self, state: ChainState, base: Mapping[str, torch.Tensor], load: Loader) -> History:
        """The ``History`` of ``state``'s open round, whose base model is ``base``."""
        digest = state.config.initial_model
        with self._lock:
            if self._initial is None or self._initial[0] != digest:
                self._initial = (digest, load(digest))
            initial = self._initial[1]
        return History(self.contributions(state.closed_rounds, load), trajectory(base, initial))

    def contributions(self, closed: ClosedRound | None, load: Loader) -> dict[str, Tensors]:
        """Member did -> sum of its accepted deltas in ``closed`` and every earlier round."""
        if closed is None:
            return {}
        with self._lock:
            if self._key != closed.key:
                previous = closed.previous
                if previous is not None and self._key == previous.key:
                    self._add(closed, load)
                else:
                    self._key, self._sums = None, {}
                    for record in closed.oldest_first():
                        self._add(record, load)
                self._key = closed.key
            return dict(self._sums)

    def _add(self, record: ClosedRound, load: Loader) -> None:
        sums = dict(self._sums)
        for update in sorted(record.accepted, key=lambda u: u.tx):
            delta = load(update.blob)
            held = sums.get(update.author)
            sums[update.author] = {
                name: to_float64(delta[name])
                if held is None
                else held[name] + to_float64(delta[name])
                for name in sorted(delta)
            }
        self._sums = sums
