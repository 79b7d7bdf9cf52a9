"""The message log of one height: votes tallied by voting power, equivocation detected.

"2f+1" and "f+1" in the paper mean voting power: with integer arithmetic, more than 2/3 is
``3 * power > 2 * total`` and more than 1/3 is ``3 * power > total`` (PITFALLS.md, BFT
arithmetic). A second, different vote of a validator for the same (round, type) is returned
with the first as the conflicting pair: the evidence of double signing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from bcfl_cli.protocol.block import Vote, VoteType


def more_than_two_thirds(power: int, total: int) -> bool:
    return 3 * power > 2 * total


def more_than_one_third(power: int, total: int) -> bool:
    return 3 * power > total


@dataclass
class RoundVotes:
    """Votes of one type in one round.

    As in the paper's message log, a validator that voted for two blocks counts towards both
    (it is Byzantine; the bound on Byzantine power is what keeps quorums safe), but once only
    towards "any" (``power``). Counting both matters for liveness: a correct node that saw the
    nil half of an equivocation must still be able to see 2f+1 prevotes for the value the
    others locked on (L28), or the height may never end.
    """

    by_validator: dict[str, dict[str, Vote]] = field(default_factory=dict)
    power_by_block: dict[str, int] = field(default_factory=dict)
    power: int = 0

    def add(self, vote: Vote, power: int, *, admissible: bool) -> Vote | None:
        """Count ``vote``; returns the validator's first vote if this one conflicts with it.

        A conflicting vote is counted only when ``admissible`` (the engine says so for nil and
        for proposed blocks), which bounds what one equivocator can make us store.
        """
        mine = self.by_validator.get(vote.validator)
        if mine is None:
            self.by_validator[vote.validator] = {vote.block: vote}
            self.power += power
        elif vote.block in mine:
            return None
        elif not admissible:
            return next(iter(mine.values()))
        else:
            mine[vote.block] = vote
        self.power_by_block[vote.block] = self.power_by_block.get(vote.block, 0) + power
        return None if mine is None else next(iter(mine.values()))

    def for_block(self, block: str) -> list[Vote]:
        return [m[block] for m in self.by_validator.values() if block in m]


@dataclass
class HeightVotes:
    """All votes of one height, by (round, type), plus who sent anything in each round."""

    total: int
    rounds: dict[tuple[int, VoteType], RoundVotes] = field(default_factory=dict)
    senders: dict[int, dict[str, int]] = field(default_factory=dict)  # round -> did -> power

    def get(self, round: int, vtype: VoteType) -> RoundVotes:
        votes = self.rounds.get((round, vtype))
        if votes is None:
            votes = self.rounds[(round, vtype)] = RoundVotes()
        return votes

    def seen(self, vote: Vote) -> bool:
        votes = self.rounds.get((vote.round, vote.type))
        if votes is None:
            return False
        mine = votes.by_validator.get(vote.validator)
        return mine is not None and mine.get(vote.block) == vote

    def note_sender(self, round: int, did: str, power: int) -> None:
        self.senders.setdefault(round, {})[did] = power

    def quorum_for(self, round: int, vtype: VoteType, block: str) -> bool:
        votes = self.rounds.get((round, vtype))
        return votes is not None and more_than_two_thirds(
            votes.power_by_block.get(block, 0), self.total
        )

    def quorum_any(self, round: int, vtype: VoteType) -> bool:
        votes = self.rounds.get((round, vtype))
        return votes is not None and more_than_two_thirds(votes.power, self.total)

    def skip_round(self, current: int) -> int | None:
        """Highest round above ``current`` in which more than 1/3 of the power sent messages."""
        above = [
            round
            for round, who in self.senders.items()
            if round > current and more_than_one_third(sum(who.values()), self.total)
        ]
        return max(above) if above else None
