"""How many bytes of request bodies the node holds at once, per signer and in all.

A body is read only after the signature on the request's head checked out (``auth.py``), but
it is not authenticated until it is whole and matches the signed ``Content-Digest``, and a
route may keep it a while (an update waits for its round). Each byte read is taken from this
budget until the request is answered: one signer (a member, or a newcomer on ``/v1/join``)
holds at most ``per_signer`` bytes, everyone together at most ``total``. A body that does not
fit is refused (503, retry later) as it arrives, so what strangers and members can make the
node hold is bounded whatever they send.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Bytes of bodies one signer may have the node hold at once (two full 8 MiB bodies).
DEFAULT_PER_SIGNER_BYTES = 16 * 1024 * 1024
#: Bytes of bodies the node holds at once, everyone together.
DEFAULT_TOTAL_BYTES = 64 * 1024 * 1024


@dataclass
class BodyBudget:
    """Bytes held by signer; ``take`` before keeping a piece, ``give`` back when done."""

    total: int = DEFAULT_TOTAL_BYTES
    per_signer: int = DEFAULT_PER_SIGNER_BYTES
    peak: int = 0  # the most ever held at once (tests and figures)
    _held: dict[str, int] = field(default_factory=dict)
    _sum: int = 0

    def __post_init__(self) -> None:
        if self.total < 1 or self.per_signer < 1:
            raise ValueError("body budgets must be positive")

    @property
    def held(self) -> int:
        return self._sum

    def held_by(self, signer: str) -> int:
        return self._held.get(signer, 0)

    def take(self, signer: str, size: int) -> bool:
        """Reserve ``size`` bytes for ``signer``; False (nothing reserved) when over a bound."""
        mine = self._held.get(signer, 0)
        if size < 0 or mine + size > self.per_signer or self._sum + size > self.total:
            return False
        self._held[signer] = mine + size
        self._sum += size
        self.peak = max(self.peak, self._sum)
        return True

    def give(self, signer: str, size: int) -> None:
        mine = self._held.get(signer, 0)
        size = min(size, mine)
        if mine - size > 0:
            self._held[signer] = mine - size
        else:
            self._held.pop(signer, None)
        self._sum -= size


__all__ = ["DEFAULT_PER_SIGNER_BYTES", "DEFAULT_TOTAL_BYTES", "BodyBudget"]
