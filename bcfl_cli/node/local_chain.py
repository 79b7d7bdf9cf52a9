"""The chain a node follows: its ledger replayed, the head, the safety alarm, the home's pin.

The one place where a decided block is appended (``accept_block``), whether the consensus
reactor decided it here or block sync verified it from a peer, and the one source of commit
notifications (``on_commit``): the mempool, the blob keeper, the round preparation, the
consensus reactor and the trainer each subscribe instead of being called by name.

Under a safety alarm (two blocks with valid certificates at one height) nothing more is
appended; the evidence is kept in ``HOME/node/alarm.json`` and read back at the next start.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import logging
from collections.abc import Sequence
from typing import Any

from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import BcflError, NodeError, StoreError
from bcfl_cli.home import Home
from bcfl_cli.node.interfaces import CommitListener
from bcfl_cli.node.logging import fields
from bcfl_cli.protocol.block import Block, ValidatorSet
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.store.pin import PinKeeper

log = logging.getLogger("bcfl.node")

ALARM_FILE = "alarm.json"


def member_role(state: ChainState, did: str) -> str:
    """``observer`` (not an active member), ``member`` or ``validator``."""
    member = state.member(did)
    if member is None or not member.active:
        return "observer"
    return "validator" if member.is_validator else "member"


def replay(ledger: Ledger, genesis: Block) -> tuple[ChainState, list[tuple[int, ValidatorSet]]]:
    """Rebuild the state from our own store (verified when appended, so no signatures), and
    the validator sets by the height they start at."""
    state = ChainState.from_genesis(genesis, ledger.document)
    sets = [(1, state.validator_set)]
    for block in ledger.blocks(1):
        state = state.apply(block, verify_signatures=False)
        if state.validator_set != sets[-1][1]:
            sets.append((block.height + 1, state.validator_set))
    return state, sets


def alarm_document(height: int, ours: Block, theirs: Block, source: str, message: str) -> str:
    return json.dumps(
        {
            "height": height,
            "message": message,
            "source": source,
            "blocks": [ours.to_dict(), theirs.to_dict()],
        },
        indent=1,
    )


class LocalChain:
    """The node's chain (see the module docstring); implements ``CommittingChain``."""

    def __init__(self, home: Home) -> None:
        self.home = home
        self.ledger = Ledger.open(home)
        self.blobs = self.ledger.blobs
        self.document = self.ledger.document
        self.genesis = self.ledger.block(0)
        self.genesis_hash = self.genesis.hash
        self.state, self._validator_sets = replay(self.ledger, self.genesis)
        self.head = self.ledger.head()
        self.pin = self._open_pin()
        self.alarm: dict[str, Any] | None = self._load_alarm()
        #: commit notifications, called in order after each appended block
        self.on_commit: list[CommitListener] = []
        self._advanced = asyncio.Event()  # set, then replaced, on each appended block

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

    def _load_alarm(self) -> dict[str, Any] | None:
        path = self.home.node_dir / ALARM_FILE
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return {
                "height": int(data["height"]),
                "blocks": [Block.from_dict(b).hash for b in data["blocks"]],
                "message": str(data["message"]),
            }
        except (OSError, ValueError, KeyError, TypeError, BcflError):
            return {"height": -1, "blocks": [], "message": f"unreadable alarm file {path}"}

    # --- queries --------------------------------------------------------------------------
    def block(self, height: int) -> Block:
        return self.ledger.block(height)

    def head_hash_at(self, height: int) -> str | None:
        """Hash of our block at ``height`` (None above the head)."""
        if height == self.state.height:
            return self.state.head_hash
        if height > self.state.height:
            return None
        return self.ledger.block(height).hash

    def validator_set_at(self, height: int) -> ValidatorSet | None:
        if height < 1 or height > self.state.height + 1:
            return None
        starts = [h for h, _ in self._validator_sets]
        index = bisect.bisect_right(starts, height) - 1
        return self._validator_sets[index][1]

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
        if self.alarm is not None:
            log.error(
                "not appending block %d: a safety alarm is raised",
                block.height,
                extra=fields(source=source),
            )
            return
        if block.height <= self.state.height:
            ours = self.ledger.block(block.height)
            if ours.hash != block.hash:
                self.raise_alarm(block.height, ours, block, source=source)
            return
        if block.height != self.state.height + 1 or new_state.head_hash != block.hash:
            raise NodeError(f"block {block.height} does not follow the head {self.state.height}")
        self.ledger.append(block)
        self._adopt_appended(block, new_state, source=source)
        self._note_pin(block)

    def accept_blocks(self, decided: Sequence[tuple[Block, ChainState]], *, source: str) -> None:
        """``accept_block`` for consecutive blocks (sync): appended in one database transaction.

        Each pair is a block and the state after it, verified in order on top of the head.
        """
        if len(decided) <= 1 or self.alarm is not None:
            for block, new_state in decided:
                self.accept_block(block, new_state, source=source)
            return
        height, head = self.state.height, self.state.head_hash
        for block, new_state in decided:
            if block.height != height + 1 or block.header.prev != head:
                raise NodeError(f"block {block.height} does not follow the head {height}")
            if new_state.head_hash != block.hash:
                raise NodeError(f"block {block.height} and its state do not match")
            height, head = block.height, block.hash
        self.ledger.append_many([block for block, _ in decided])
        for block, new_state in decided:
            self._adopt_appended(block, new_state, source=source)
        self._note_pin(decided[-1][0])

    def _adopt_appended(self, block: Block, new_state: ChainState, *, source: str) -> None:
        if new_state.validator_set != self.state.validator_set:
            self._validator_sets.append((block.height + 1, new_state.validator_set))
        finishes = new_state.plan_finished and not self.state.plan_finished
        self.state = new_state
        self.head = block
        rnd = new_state.round
        log.info(
            "committed",
            extra=fields(
                height=block.height,
                block=block.hash,
                txs=len(block.txs),
                source=source,
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
        message = (
            f"SAFETY ALARM: two blocks with valid commit certificates at height {height} "
            f"({ours.hash[:16]} here, {theirs.hash[:16]} from {source}); this node stopped "
            f"following the chain. Evidence in {self.home.node_dir / ALARM_FILE}"
        )
        if self.alarm is None:
            self.home.node_dir.mkdir(parents=True, exist_ok=True)
            path = self.home.node_dir / ALARM_FILE
            path.write_text(alarm_document(height, ours, theirs, source, message), encoding="utf-8")
            self.alarm = {"height": height, "blocks": [ours.hash, theirs.hash], "message": message}
        log.critical(message, extra=fields(height=height, blocks=[ours.hash, theirs.hash]))

    # --- life cycle -----------------------------------------------------------------------
    def close(self) -> None:
        self.ledger.close()
