"""What the chain says happened: rounds, each member's update and its verdict, evidence.

The demo reads the decided blocks (``GET /v1/blocks``) of one node and folds them into this
record; everything it shows about updates comes from the chain, never from the nodes' logs, so
what the user sees is exactly what ``verify-chain`` will re-derive.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bcfl_cli.protocol.tx import Transaction, TxKind


@dataclass
class UpdateRecord:
    """One member's update in one round: ``submitted`` until its verdict is on chain."""

    tx: str
    round: int
    height: int
    status: str = "submitted"  # submitted | accepted | rejected
    reason: str = ""
    detail: str = ""
    blob: str = ""
    num_samples: int = 0
    #: whether the aggregation rule used this accepted update (None: not computed)
    included: bool | None = None


@dataclass
class RoundRecord:
    number: int
    opened_height: int
    base_model: str
    deadline_height: int
    closed_height: int | None = None
    model: str | None = None
    rule: str = ""
    aggregated: int = 0
    updates: tuple[str, ...] = ()
    accuracy: float | None = None
    loss: float | None = None

    @property
    def closed(self) -> bool:
        return self.closed_height is not None


@dataclass
class ChainProgress:
    """Blocks folded in height order; ``names`` maps member dids to their names."""

    names: dict[str, str]
    height: int = 0
    head: str = ""
    rounds: dict[int, RoundRecord] = field(default_factory=dict)
    updates: dict[str, dict[int, UpdateRecord]] = field(default_factory=dict)  # did -> round
    by_tx: dict[str, UpdateRecord] = field(default_factory=dict)
    misbehaviour: list[dict[str, Any]] = field(default_factory=list)
    txs: int = 0

    def name(self, did: str) -> str:
        return self.names.get(did, did[:16])

    def feed(self, block: dict[str, Any], block_hash: str) -> None:
        """Fold the next decided block (``Block.to_dict()`` form) into the record."""
        header = block["header"]
        height = int(header["height"])
        if height != self.height + 1:
            raise ValueError(f"expected block {self.height + 1}, got {height}")
        for raw in block["txs"]:
            self._tx(Transaction.from_dict(raw), height)
        self.height, self.head = height, block_hash

    def _tx(self, tx: Transaction, height: int) -> None:
        self.txs += 1
        body = tx.body
        if tx.kind is TxKind.OPEN_ROUND:
            number = int(body["round"])
            self.rounds[number] = RoundRecord(
                number, height, body["base_model"], int(body["deadline_height"])
            )
        elif tx.kind is TxKind.UPDATE:
            record = UpdateRecord(
                tx.hash,
                int(body["round"]),
                height,
                blob=str(body["blob"]),
                num_samples=int(body["num_samples"]),
            )
            self.updates.setdefault(tx.author, {})[record.round] = record
            self.by_tx[tx.hash] = record
        elif tx.kind is TxKind.VALIDATION:
            found = self.by_tx.get(body["update"])
            if found is not None:
                found.status = "accepted" if body["verdict"] == "accept" else "rejected"
                found.reason, found.detail = body["reason"], body["detail"]
        elif tx.kind is TxKind.AGGREGATE:
            rnd = self.rounds.get(int(body["round"]))
            if rnd is not None:
                rnd.closed_height, rnd.model = height, body["model"]
                rnd.rule, rnd.aggregated = body["rule"], len(body["updates"])
                rnd.updates = tuple(body["updates"])
        elif tx.kind is TxKind.MISBEHAVIOUR:
            self.misbehaviour.append(
                {"height": height, "reporter": self.name(tx.author), "offender": body["offender"]}
            )

    # --- views ----------------------------------------------------------------------------
    @property
    def current_round(self) -> RoundRecord | None:
        return self.rounds[max(self.rounds)] if self.rounds else None

    @property
    def closed_rounds(self) -> list[RoundRecord]:
        return [self.rounds[n] for n in sorted(self.rounds) if self.rounds[n].closed]

    def member_counts(self, did: str) -> dict[str, int]:
        out = {"submitted": 0, "accepted": 0, "rejected": 0}
        for record in self.updates.get(did, {}).values():
            out["submitted"] += 1
            if record.status != "submitted":
                out[record.status] += 1
        return out

    def rejections(self, did: str) -> dict[str, int]:
        """Reason code -> count of this member's rejected updates."""
        out: dict[str, int] = {}
        for record in self.updates.get(did, {}).values():
            if record.status == "rejected":
                out[record.reason] = out.get(record.reason, 0) + 1
        return out

    def in_round(self, did: str, number: int) -> UpdateRecord | None:
        return self.updates.get(did, {}).get(number)
