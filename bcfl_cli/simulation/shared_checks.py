"""One process, many members: each deterministic FL check computed once, not once a member.

The contract's verdict on an update and the recomputed aggregate are pure functions of the
transaction, the round's context and the blobs named by hash (``fl/checks.py``), so every
member of a simulation would compute the same answer. ``--share-checks`` keeps the first answer
for the others, exactly as the engine shares verified signatures; each member still applies
every chain rule itself. Off by default: then each member checks for itself, as a node does.
"""

from __future__ import annotations

from bcfl_cli.errors import BcflError
from bcfl_cli.fl.checks import FLChecks, Verdict
from bcfl_cli.fl.views import StateView
from bcfl_cli.protocol.tx import Transaction

#: Answers kept (then forgotten at once; a round needs about two per member).
MAX_SHARED_ANSWERS = 1 << 16

UpdateKey = tuple[str, int, bool, str, bool, bool]
AggregateKey = tuple[str, str, tuple[str, ...]]


class SharedChecks(FLChecks):
    """``FLChecks`` whose answers are remembered by everything they depend on."""

    def __init__(self, checks: FLChecks) -> None:
        super().__init__(checks.blobs, keep_models=checks.keep_models)
        self._verdicts: dict[UpdateKey, Verdict] = {}
        self._aggregates: dict[AggregateKey, BcflError | None] = {}

    def check_update(self, state: StateView, tx: Transaction) -> Verdict:
        rnd = state.round
        key = (
            tx.hash,
            rnd.number,
            rnd.open,
            rnd.base_model,
            tx.author in rnd.submitted,
            tx.author in state.trainers,
        )
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = super().check_update(state, tx)
            if len(self._verdicts) >= MAX_SHARED_ANSWERS:
                self._verdicts.clear()
            self._verdicts[key] = verdict
        return verdict

    def check_aggregate(self, state: StateView, tx: Transaction) -> None:
        rnd = state.round
        key = (tx.hash, rnd.base_model, tuple(u.tx for u in rnd.accepted))
        if key not in self._aggregates:
            try:
                super().check_aggregate(state, tx)
                answer: BcflError | None = None
            except BcflError as exc:
                answer = exc
            if len(self._aggregates) >= MAX_SHARED_ANSWERS:
                self._aggregates.clear()
            self._aggregates[key] = answer
        failure = self._aggregates[key]
        if failure is not None:
            raise failure
