"""Who proposes at (height, round): weighted round-robin by voting power.

The priority algorithm of CometBFT (spec/consensus/proposer-selection.md): every step each
validator's priority grows by its power, the highest priority proposes (ties go to the smaller
did) and pays the total power back. Started from all-zero priorities the sum stays 0, so the
spec's centring and rescaling steps are no-ops, and after ``total`` steps every priority is 0
again with each validator chosen exactly ``power`` times (the paper's footnote on proposer
rotation). The sequence is therefore periodic, and the proposer of (h, r) is entry
``(h + r) mod period``: a pure function of the validator set, height and round that every
member computes alike, with no state carried across heights.
"""

from __future__ import annotations

import math
from functools import lru_cache

from bcfl_cli.protocol.block import ValidatorSet

#: Longest period we materialise. Larger total powers are scaled down proportionally first
#: (deterministically), which keeps fairness to within one slot per period.
MAX_PERIOD = 1 << 14


def proposer(validators: ValidatorSet, height: int, round: int) -> str:
    """The did proposing at (height, round); the paper's ``proposer(h, round)``."""
    sequence = proposer_sequence(validators.powers)
    return sequence[(height + round) % len(sequence)]


@lru_cache(maxsize=64)
def proposer_sequence(powers: tuple[tuple[str, int], ...]) -> tuple[str, ...]:
    """One full period of the weighted round-robin for ``powers`` (did, power), by did."""
    if not powers:
        raise ValueError("an empty validator set has no proposer")
    if any(power <= 0 for _, power in powers):
        raise ValueError("every validator needs a positive voting power to propose in turn")
    weights = _scaled(powers)
    total = sum(p for _, p in weights)
    priority = {did: 0 for did, _ in weights}
    sequence: list[str] = []
    for _ in range(total):
        for did, power in weights:
            priority[did] += power
        # Highest priority first; on a tie the smaller did (CometBFT: the smaller address).
        best = min(priority, key=lambda d: (-priority[d], d))
        priority[best] -= total
        sequence.append(best)
    return tuple(sequence)


def _scaled(powers: tuple[tuple[str, int], ...]) -> list[tuple[str, int]]:
    g = 0
    for _, p in powers:
        g = math.gcd(g, p)
    weights = [(d, p // g) for d, p in sorted(powers)]
    total = sum(p for _, p in weights)
    if total > MAX_PERIOD:
        weights = [(d, max(1, p * MAX_PERIOD // total)) for d, p in weights]
    return weights
