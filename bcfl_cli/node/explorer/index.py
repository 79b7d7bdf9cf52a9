"""Per-round summaries folded from committed blocks, for the explorer's rounds view.

The chain holds each round as a run of transactions (``open_round``, ``update``/``validation``
pairs, ``aggregate``); answering "which updates were rejected, and why" from the ledger would
scan it on every poll. The index reads each committed block once, in order, and keeps only
what the page shows: memory grows with rounds x updates, both bounded by the genesis (the
plan's number of rounds, one update per trainer per round), never with blocks.

Blocks are committed, so the chain rules held for them: the index trusts their shape (a
validation follows its update, bodies carry the fields PROTOCOL.md lists) but never raises on
an odd one; what it cannot place it skips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.provenance.card import mean_decimal

#: Blocks read from the ledger between two yields to the event loop while catching up.
CATCH_UP_CHUNK = 50
#: The metric the model card averages (provenance/card.py): a member's held-out accuracy.
ACCURACY_METRIC = "eval_accuracy"


@dataclass
class UpdateSummary:
    tx: str
    author: str
    height: int
    num_samples: int
    eval_accuracy: str | None
    verdict: str | None = None  # None until its validation is read (the same block, by rule)
    reason: str = ""
    detail: str = ""
    included: bool = False  # named by the round's aggregate

    def to_dict(self, name_of: Callable[[str], str]) -> dict[str, Any]:
        return {
            "tx": self.tx,
            "author": self.author,
            "name": name_of(self.author),
            "height": self.height,
            "num_samples": self.num_samples,
            "eval_accuracy": self.eval_accuracy,
            "verdict": self.verdict,
            "reason": self.reason,
            "detail": self.detail,
            "included": self.included,
        }


@dataclass
class RoundSummary:
    number: int
    opened_at: int
    open_tx: str
    base_model: str
    deadline_height: int
    #: the round's deadline in block time (ms), when the plan counts one (round_deadline_s)
    deadline_time: int | None = None
    closed_at: int | None = None
    aggregate_tx: str | None = None
    model: str | None = None
    rule: str | None = None
    updates: list[UpdateSummary] = field(default_factory=list)

    @property
    def closed(self) -> bool:
        return self.closed_at is not None

    def mean_eval_accuracy(self) -> str | None:
        """Mean of the accepted updates' reported accuracy, as the model card computes it."""
        return mean_decimal(u.eval_accuracy for u in self.updates if u.verdict == "accept")

    def to_dict(self, name_of: Callable[[str], str]) -> dict[str, Any]:
        return {
            "number": self.number,
            "state": "closed" if self.closed else "open",
            "opened_at": self.opened_at,
            "open_tx": self.open_tx,
            "base_model": self.base_model,
            "deadline_height": self.deadline_height,
            "deadline_time": self.deadline_time,
            "closed_at": self.closed_at,
            "aggregate_tx": self.aggregate_tx,
            "model": self.model,
            "rule": self.rule,
            "mean_eval_accuracy": self.mean_eval_accuracy(),
            "accepted": sum(u.verdict == "accept" for u in self.updates),
            "rejected": sum(u.verdict == "reject" for u in self.updates),
            "updates": [u.to_dict(name_of) for u in self.updates],
        }


class RoundIndex:
    """Rounds as the committed blocks tell them, kept up to date by :meth:`catch_up`."""

    def __init__(self) -> None:
        self.height = 0  # the last block folded in (genesis opens no round)
        self.rounds: dict[int, RoundSummary] = {}
        self._pending: dict[str, UpdateSummary] = {}  # the open round's updates, by tx hash
        self._lock = asyncio.Lock()

    async def catch_up(self, blocks: Callable[[int, int], Iterable[Block]], height: int) -> None:
        """Fold in blocks up to ``height`` (``blocks(first, last)`` reads them), a chunk at a
        time, yielding to the event loop between chunks; one caller catches up at a time."""
        async with self._lock:
            while self.height < height:
                last = min(height, self.height + CATCH_UP_CHUNK)
                for block in blocks(self.height + 1, last):
                    self.add(block)
                self.height = last
                if self.height < height:
                    await asyncio.sleep(0)

    def add(self, block: Block) -> None:
        """Fold in one committed block (the next one: heights are not checked here)."""
        for tx in block.txs:
            body = tx.body
            try:
                if tx.kind is TxKind.OPEN_ROUND:
                    self._open(tx.hash, block.height, body)
                elif tx.kind is TxKind.UPDATE:
                    self._update(tx.hash, tx.author, block.height, body)
                elif tx.kind is TxKind.VALIDATION:
                    self._validation(body)
                elif tx.kind is TxKind.AGGREGATE:
                    self._aggregate(tx.hash, block.height, body)
            except (KeyError, TypeError, ValueError):  # committed, so never expected: skip it
                continue

    def page(self, start: int, limit: int) -> list[RoundSummary]:
        return [self.rounds[n] for n in range(start, start + limit) if n in self.rounds]

    @property
    def latest(self) -> int:
        return max(self.rounds, default=0)

    def _open(self, digest: str, height: int, body: dict[str, Any]) -> None:
        number = int(body["round"])
        self.rounds[number] = RoundSummary(
            number=number,
            opened_at=height,
            open_tx=digest,
            base_model=str(body["base_model"]),
            deadline_height=int(body["deadline_height"]),
            deadline_time=int(body["deadline_time"]) if "deadline_time" in body else None,
        )
        self._pending = {}

    def _update(self, digest: str, author: str, height: int, body: dict[str, Any]) -> None:
        rnd = self.rounds.get(int(body["round"]))
        if rnd is None or rnd.closed:
            return
        metrics = body.get("metrics")
        accuracy = metrics.get(ACCURACY_METRIC) if isinstance(metrics, dict) else None
        entry = UpdateSummary(
            tx=digest,
            author=author,
            height=height,
            num_samples=int(body["num_samples"]),
            eval_accuracy=accuracy if isinstance(accuracy, str) else None,
        )
        rnd.updates.append(entry)
        self._pending[digest] = entry

    def _validation(self, body: dict[str, Any]) -> None:
        entry = self._pending.get(str(body["update"]))
        if entry is None:
            return
        entry.verdict = str(body["verdict"])
        entry.reason = str(body["reason"])
        entry.detail = str(body.get("detail", ""))

    def _aggregate(self, digest: str, height: int, body: dict[str, Any]) -> None:
        rnd = self.rounds.get(int(body["round"]))
        if rnd is None:
            return
        included = set(body["updates"])
        for entry in rnd.updates:
            entry.included = entry.tx in included
        rnd.closed_at, rnd.aggregate_tx = height, digest
        rnd.model, rnd.rule = str(body["model"]), str(body["rule"])
        self._pending = {}
