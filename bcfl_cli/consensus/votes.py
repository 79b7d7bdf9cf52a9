"""The message log of one height: votes tallied by voting power, equivocation detected.

"2f+1" and "f+1" in the paper mean voting power: with integer arithmetic, more than 2/3 is
``3 * power > 2 * total`` and more than 1/3 is ``3 * power > total`` (PITFALLS.md, BFT
arithmetic). Only the first vote of a validator for a (round, type) is counted; a different
second one is returned as the conflicting pair, which is the evidence of double signing.
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
    """Votes of one type in one round."""

    by_validator: dict[str, Vote] = field(default_factory=dict)
    power_by_block: dict[str, int] = field(default_factory=dict)
    power: int = 0

    def add(self, vote: Vote, power: int) -> Vote | None:
        """Count ``vote``; returns the earlier conflicting vote of the same validator, if any."""
        earlier = self.by_validator.get(vote.validator)
        if earlier is not None:
            return earlier if earlier.block != vote.block else None
        self.by_validator[vote.validator] = vote
        self.power_by_block[vote.block] = self.power_by_block.get(vote.block, 0) + power
        self.power += power
        return None

    def for_block(self, block: str) -> list[Vote]:
        return [v for v in self.by_validator.values() if v.block == block]


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
        return votes is not None and votes.by_validator.get(vote.validator) == vote

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
