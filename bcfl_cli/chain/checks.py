"""Hooks through which the FL engine takes part in the chain rules (deep verification).

The chain decides *who* may do *what* and *when*; whether an update's tensors obey the contract
and whether an aggregate's model is the one the rule computes needs the FL engine, which the
chain must not import (it would pull torch into every verification). The FL side implements
:class:`AppChecks`; its ``Verdict`` satisfies :class:`VerdictLike` structurally.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from bcfl_cli.protocol.tx import Transaction

if TYPE_CHECKING:
    from bcfl_cli.chain.state import ChainState


class VerdictLike(Protocol):
    """A contract verdict on one update: what its ``validation`` transaction must state."""

    @property
    def accept(self) -> bool: ...

    @property
    def reason(self) -> str: ...

    @property
    def detail(self) -> str: ...


class AppChecks(Protocol):
    def check_update(self, state: ChainState, tx: Transaction) -> VerdictLike:
        """The verdict the contract gives ``tx`` (an ``update``) in ``state``."""
        ...

    def check_aggregate(self, state: ChainState, tx: Transaction) -> None:
        """Raise (any BcflError) unless ``tx`` (an ``aggregate``) is what the rule computes."""
        ...
