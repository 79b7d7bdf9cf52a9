"""One chain: a member's ledger replayed from genesis once, and every later block imported
through one path, validate then persist.

py-evm's ``Chain`` (``import_block -> validate -> persist``) and CometBFT's ``BlockExecutor``
(one ``ApplyBlock`` for consensus and block sync) are the models: the node's consensus commit
and its block sync, ``bcfl train`` and ``bcfl status`` all open the same ``Chain`` instead of
each replaying the store its own way. Blocks in a member's store were verified when they were
appended, so the opening replay skips signatures (``bcfl verify-chain`` re-checks everything).

The chain also keeps the safety alarm (``alarm.py``): once two certified blocks were seen at
one height it persists nothing more. Whoever needs to act on a commit (mempool, trainer, blob
collection) subscribes; listeners run in the caller's thread, after the block's database
transaction committed.
"""

from __future__ import annotations

import bisect
import enum
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from bcfl_cli.chain.alarm import ALARM_FILE, alarm_document, read_alarm
from bcfl_cli.chain.checks import AppChecks
from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import NodeError
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Block, ValidatorSet
from bcfl_cli.store.ledger import Ledger


@dataclass(frozen=True)
class Commit:
    """One appended block, the state before and after it, and who decided it."""

    block: Block
    state: ChainState
    previous: ChainState
    source: str


CommitListener = Callable[[Commit], None]


class Persisted(enum.Enum):
    """What ``Chain.persist`` did with a block validated on top of the head."""

    APPENDED = "appended"
    KNOWN = "known"  # the same block is already held at its height
    FORKED = "forked"  # another block is held at its height: the alarm is raised now
    HALTED = "halted"  # an alarm was raised before: nothing is appended any more


class Chain:
    """The application state at the head of one ledger, kept in step with it."""

    def __init__(self, ledger: Ledger, *, alarm_path: Path | None = None) -> None:
        self.ledger = ledger
        self.genesis = ledger.block(0)
        self.document = ledger.document
        self.alarm_path = alarm_path
        state = ChainState.from_genesis(self.genesis, self.document)
        head = self.genesis
        sets = [(1, state.validator_set)]
        for block in ledger.blocks(1):
            state = state.apply(block, verify_signatures=False)
            head = block
            if state.validator_set != sets[-1][1]:
                sets.append((block.height + 1, state.validator_set))
        self._state = state
        self._head = head
        self._validator_sets = sets
        self.alarm: dict[str, Any] | None = read_alarm(alarm_path) if alarm_path else None
        self._listeners: list[CommitListener] = []

    @classmethod
    def open(cls, home: Home) -> Chain:
        """The home's ledger, replayed; its alarm file is ``HOME/node/alarm.json``."""
        ledger = Ledger.open(home)
        try:
            return cls(ledger, alarm_path=home.node_dir / ALARM_FILE)
        except BaseException:
            ledger.close()
            raise

    def close(self) -> None:
        self.ledger.close()

    def __enter__(self) -> Chain:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # --- queries ---------------------------------------------------------------------------
    @property
    def state(self) -> ChainState:
        return self._state

    @property
    def head(self) -> Block:
        return self._head

    @property
    def height(self) -> int:
        return self._state.height

    @property
    def genesis_hash(self) -> str:
        return self.genesis.hash

    def head_hash_at(self, height: int) -> str | None:
        """Hash of our block at ``height`` (None above the head)."""
        if height == self._state.height:
            return self._state.head_hash
        if height > self._state.height:
            return None
        return self.ledger.block(height).hash

    def validator_set_at(self, height: int) -> ValidatorSet | None:
        """The set that certifies block ``height`` (None outside 1..head+1)."""
        if height < 1 or height > self._state.height + 1:
            return None
        starts = [h for h, _ in self._validator_sets]
        return self._validator_sets[bisect.bisect_right(starts, height) - 1][1]

    def state_at(self, height: int) -> ChainState | None:
        """The state after block ``height`` (None above the head); below it, a new replay."""
        if height == self._state.height:
            return self._state
        if height < 0 or height > self._state.height:
            return None
        state = ChainState.from_genesis(self.genesis, self.document)
        for block in self.ledger.blocks(1, height):
            state = state.apply(block, verify_signatures=False)
        return state

    # --- imports ---------------------------------------------------------------------------
    def subscribe(self, listener: CommitListener) -> None:
        """Call ``listener`` after each appended block, in the order of subscription."""
        self._listeners.append(listener)

    def validate(
        self, block: Block, *, checks: AppChecks | None = None, verify_signatures: bool = True
    ) -> ChainState:
        """The state after ``block`` on top of the head (VerificationError if it breaks a rule)."""
        return self._state.apply(block, checks=checks, verify_signatures=verify_signatures)

    def import_block(
        self,
        block: Block,
        *,
        checks: AppChecks | None = None,
        verify_signatures: bool = True,
        source: str = "import",
    ) -> Persisted:
        """Validate ``block`` against the head, then persist it: a block that breaks a rule
        raises before the store is touched."""
        return self.persist(
            block,
            self.validate(block, checks=checks, verify_signatures=verify_signatures),
            source=source,
        )

    def persist(self, block: Block, new_state: ChainState, *, source: str) -> Persisted:
        """Append ``block``, already validated into ``new_state`` on top of the head."""
        if self.alarm is not None:
            return Persisted.HALTED
        if block.height <= self._state.height:
            ours = self.ledger.block(block.height)
            if ours.hash == block.hash:
                return Persisted.KNOWN
            self.raise_alarm(block.height, ours, block, source=source)
            return Persisted.FORKED
        if block.height != self._state.height + 1 or new_state.head_hash != block.hash:
            raise NodeError(f"block {block.height} does not follow the head {self._state.height}")
        self.ledger.append(block)
        self._adopt(block, new_state, source)
        return Persisted.APPENDED

    def persist_many(
        self, decided: Sequence[tuple[Block, ChainState]], *, source: str
    ) -> Persisted:
        """``persist`` for consecutive blocks (sync), appended in one database transaction.

        Each pair is a block and the state after it, validated in order on top of the head.
        """
        if self.alarm is not None:
            return Persisted.HALTED
        height, head = self._state.height, self._state.head_hash
        for block, new_state in decided:
            if block.height != height + 1 or block.header.prev != head:
                raise NodeError(f"block {block.height} does not follow the head {height}")
            if new_state.head_hash != block.hash:
                raise NodeError(f"block {block.height} and its state do not match")
            height, head = block.height, block.hash
        self.ledger.append_many([block for block, _ in decided])
        for block, new_state in decided:
            self._adopt(block, new_state, source)
        return Persisted.APPENDED

    def _adopt(self, block: Block, new_state: ChainState, source: str) -> None:
        previous = self._state
        if new_state.validator_set != previous.validator_set:
            self._validator_sets.append((block.height + 1, new_state.validator_set))
        self._state, self._head = new_state, block
        commit = Commit(block, new_state, previous, source)
        for listener in self._listeners:
            listener(commit)

    # --- the safety alarm ------------------------------------------------------------------
    def raise_alarm(self, height: int, ours: Block, theirs: Block, *, source: str) -> str:
        """Record two certified blocks at ``height`` (once) and stop persisting; the message."""
        where = self.alarm_path if self.alarm_path is not None else "memory"
        message = (
            f"SAFETY ALARM: two blocks with valid commit certificates at height {height} "
            f"({ours.hash[:16]} here, {theirs.hash[:16]} from {source}); this node stopped "
            f"following the chain. Evidence in {where}"
        )
        if self.alarm is None:
            if self.alarm_path is not None:
                self.alarm_path.parent.mkdir(parents=True, exist_ok=True)
                self.alarm_path.write_text(
                    alarm_document(height, ours, theirs, source, message), encoding="utf-8"
                )
            self.alarm = {"height": height, "blocks": [ours.hash, theirs.hash], "message": message}
        return message
