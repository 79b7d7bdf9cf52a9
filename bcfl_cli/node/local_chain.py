"""The chain a node follows: ``chain.Chain`` (the one replay, persist, the safety alarm) with
what a running node adds around it: the home's pin, the commit log lines, a wait for a round,
and commit notifications by block for the node's services.

The one place where a decided block is appended (``accept_block``), whether the consensus
reactor decided it here or block sync verified it from a peer, and the one source of commit
notifications (``on_commit``): the mempool, the blob keeper, the round preparation, the
consensus reactor and the trainer each subscribe instead of being called by name.

Under a safety alarm (two blocks with valid certificates at one height) nothing more is
appended; the evidence is kept in ``HOME/node/alarm.json`` and read back at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from bcfl_cli.chain.chain import Chain, Commit, Persisted
from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import StoreError
from bcfl_cli.home import Home
from bcfl_cli.node.interfaces import BlockListener
from bcfl_cli.node.logging import fields
from bcfl_cli.protocol.block import Block, ValidatorSet
from bcfl_cli.store.pin import PinKeeper

log = logging.getLogger("bcfl.node")


def member_role(state: ChainState, did: str) -> str:
    """``observer`` (not an active member), ``member`` or ``validator``."""
    member = state.member(did)
    if member is None or not member.active:
        return "observer"
    return "validator" if member.is_validator else "member"


class LocalChain:
    """The node's chain (see the module docstring); implements ``CommittingChain``."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.chain = Chain.open(home)  # the one replay from genesis, and the alarm file
        self.ledger = self.chain.ledger
        self.blobs = self.ledger.blobs
        self.document = self.chain.document
        self.genesis = self.chain.genesis
        self.genesis_hash = self.chain.genesis_hash
        self.pin = self._open_pin()
        #: commit notifications, called in order after each appended block
        self.on_commit: list[BlockListener] = []
        self._advanced = asyncio.Event()  # set, then replaced, on each appended block
        self.chain.subscribe(self._adopted)

    @property
    def state(self) -> ChainState:
        return self.chain.state

    @property
    def head(self) -> Block:
        return self.chain.head

    @property
    def alarm(self) -> dict[str, Any] | None:
        return self.chain.alarm

    @alarm.setter
    def alarm(self, value: dict[str, Any] | None) -> None:
        self.chain.alarm = value

    # --- start-up -------------------------------------------------------------------------
    def _open_pin(self) -> PinKeeper:
        """The home's pin (genesis, highest verified head): a store it says was replaced or
        rewritten is refused; a shorter one starts and syncs back (``bcfl_cli.store.pin``)."""
        keeper = PinKeeper(
            self.home.pin_file,
            self.genesis_hash,
            self.state.height,
            lambda height: self.ledger.block(height).hash,
        )
        if keeper.pin is None:
            log.warning(
                "no pin in this home (made before pins): pinning the store's genesis and head "
                "on first use",
                extra=fields(pin=str(self.home.pin_file), height=self.state.height),
            )
        if keeper.behind:
            log.warning(
                "the store is %d blocks below the head pinned in this home (truncated or "
                "restored from an older copy); syncing them back from peers",
                keeper.behind,
                extra=fields(pin=str(self.home.pin_file), height=self.state.height),
            )
        self._flush(keeper)
        return keeper

    def flush_pin(self) -> None:
        """Write the blocks appended since the pin's last write (at a stop)."""
        self._flush(self.pin)

    @staticmethod
    def _flush(keeper: PinKeeper) -> None:
        try:
            keeper.flush()
        except StoreError as exc:  # a full disk must not stop the chain; the pin catches up
            log.warning("cannot move the pin forward: %s", exc.message)

    def _note_pin(self, block: Block) -> None:
        """After the block's database transaction committed: the pin never runs ahead."""
        try:
            self.pin.note(block.height, block.hash)
        except StoreError as exc:
            log.warning("cannot move the pin forward: %s", exc.message)

    # --- queries --------------------------------------------------------------------------
    def block(self, height: int) -> Block:
        return self.ledger.block(height)

    def head_hash_at(self, height: int) -> str | None:
        """Hash of our block at ``height`` (None above the head)."""
        return self.chain.head_hash_at(height)

    def validator_set_at(self, height: int) -> ValidatorSet | None:
        return self.chain.validator_set_at(height)

    async def wait_for_round(self, number: int, timeout_s: float) -> bool:
        """Wait, at most ``timeout_s``, until this node's chain has reached FL round ``number``.

        A peer that commits a block a moment before this node trains on the round it opens and
        sends its update at once; waiting for the same commit here costs milliseconds, where a
        refusal costs the update's trip (the blob goes again on its own, the transaction comes
        back by gossip or in a proposal, to be checked on the proposal's critical path).
        Polled as well as woken: a block appended outside the event loop (tests) still counts.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self.state.round.number < number:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._advanced.wait(), min(remaining, 0.05))
        return True

    # --- blocks ---------------------------------------------------------------------------
    def accept_block(self, block: Block, new_state: ChainState, *, source: str) -> None:
        """Append a decided, verified ``block`` whose state after is ``new_state``.

        Under a safety alarm nothing more is appended: the node stops following the chain
        until an operator has looked at the evidence (docs: what to do on a safety alarm).
        """
        outcome = self.chain.persist(block, new_state, source=source)
        if outcome is Persisted.HALTED:
            log.error(
                "not appending block %d: a safety alarm is raised",
                block.height,
                extra=fields(source=source),
            )
        elif outcome is Persisted.FORKED:
            self._log_alarm()
        elif outcome is Persisted.APPENDED:
            self._note_pin(block)

    def accept_blocks(self, decided: Sequence[tuple[Block, ChainState]], *, source: str) -> None:
        """``accept_block`` for consecutive blocks (sync): appended in one database transaction.

        Each pair is a block and the state after it, verified in order on top of the head.
        """
        if len(decided) <= 1 or self.alarm is not None:
            for block, new_state in decided:
                self.accept_block(block, new_state, source=source)
            return
        self.chain.persist_many(decided, source=source)
        self._note_pin(decided[-1][0])

    def _adopted(self, commit: Commit) -> None:
        """The chain's commit notification: the log lines, then the node's listeners."""
        block, new_state = commit.block, commit.state
        finishes = new_state.plan_finished and not commit.previous.plan_finished
        rnd = new_state.round
        log.info(
            "committed",
            extra=fields(
                height=block.height,
                block=block.hash,
                txs=len(block.txs),
                source=commit.source,
                round=rnd.number,
                round_state=rnd.state,
                accepted=len(rnd.accepted),
            ),
        )
        if finishes:  # once: the block whose aggregate closes the plan's last round
            log.info(
                "training plan finished",
                extra=fields(
                    rounds=rnd.number,
                    height=block.height,
                    time=block.header.time,
                    model=rnd.model,
                ),
            )
        for listener in self.on_commit:
            listener(block)
        self._advanced.set()
        self._advanced = asyncio.Event()

    def raise_alarm(self, height: int, ours: Block, theirs: Block, *, source: str) -> None:
        message = self.chain.raise_alarm(height, ours, theirs, source=source)
        log.critical(message, extra=fields(height=height, blocks=[ours.hash, theirs.hash]))

    def _log_alarm(self) -> None:
        alarm = self.alarm or {}
        log.critical(
            alarm.get("message", "SAFETY ALARM"),
            extra=fields(height=alarm.get("height"), blocks=alarm.get("blocks")),
        )

    # --- life cycle -----------------------------------------------------------------------
    def close(self) -> None:
        self.chain.close()
