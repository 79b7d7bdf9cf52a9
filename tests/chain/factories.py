"""Factories for consortia on a temp home: keys, genesis document, blocks committed in-process."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nacl.signing

from bcfl_cli.chain import ChainState, build_block, commit_with_keys
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import ZERO_HASH, Block, BlockHeader, ValidatorSet
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import hash_object
from bcfl_cli.protocol.merkle import merkle_root
from bcfl_cli.protocol.spec import AggregationSpec, ContractRules, ModelSpec, TrainingPlan
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.store.ledger import Ledger

GENESIS_TIME = 1_700_000_000_000


def key_for(name: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(b"bcfl-test-key:" + name.encode()).digest())


def did_for(name: str) -> str:
    return did_from_public_key(bytes(key_for(name).verify_key))


def make_document(
    members: Sequence[tuple[str, list[str], int]],
    initial_model: str,
    *,
    admission_approvals: int = 2,
    removal_approvals: int = 2,
    training: dict[str, Any] | None = None,
    aggregation: dict[str, Any] | None = None,
    join_request_ttl_blocks: int | None = None,
    max_pending_joins: int | None = None,
) -> dict[str, Any]:
    consortium: dict[str, Any] = {
        "name": "Test Consortium",
        "admission_approvals": admission_approvals,
        "removal_approvals": removal_approvals,
    }
    if join_request_ttl_blocks is not None:
        consortium["join_request_ttl_blocks"] = join_request_ttl_blocks
    if max_pending_joins is not None:
        consortium["max_pending_joins"] = max_pending_joins
    return {
        "v": 1,
        "consortium": consortium,
        "members": [
            {"name": n, "did": did_for(n), "roles": roles, "power": power}
            for n, roles, power in members
        ],
        "model": ModelSpec(architecture="mlp", input_shape=[64], num_classes=10).to_document(),
        "training": TrainingPlan(
            **(training or {"min_updates": 2, "deadline_blocks": 5})
        ).to_document(),
        "contract": ContractRules().to_document(),
        "aggregation": AggregationSpec(**(aggregation or {"rule": "fedavg"})).to_document(),
        "initial_model": initial_model,
    }


def make_genesis(document: dict[str, Any], *, time_ms: int = GENESIS_TIME) -> Block:
    validators = ValidatorSet.from_mapping(
        {m["did"]: m["power"] for m in document["members"] if "validator" in m["roles"]}
    )
    header = BlockHeader(
        height=0,
        prev=ZERO_HASH,
        time=time_ms,
        proposer="",
        tx_root=merkle_root([]),
        validators=validators.hash,
        config=hash_object(document),
    )
    return Block(header, (), None)


FOUR = (
    ("alice", ["trainer", "validator"], 1),
    ("bob", ["trainer", "validator"], 1),
    ("carol", ["trainer", "validator"], 1),
    ("dave", ["trainer", "validator"], 1),
)


@dataclass
class Consortium:
    home: Home
    document: dict[str, Any]
    genesis: Block
    ledger: Ledger
    state: ChainState
    clock: int = GENESIS_TIME
    blocks: list[Block] = field(default_factory=list)

    @property
    def chain(self) -> str:
        return self.genesis.hash

    def tx(self, name: str, kind: TxKind, body: dict[str, Any]) -> Transaction:
        self.clock += 1
        return make_tx(key_for(name), self.chain, kind, body, time_ms=self.clock)

    def next_block(self, txs: Sequence[Transaction], proposer: str = "alice") -> Block:
        """Build and commit (by every validator in force) the next block, without applying it."""
        self.clock += 10
        block = build_block(
            self.state, self.ledger.head(), txs, key_for(proposer), time_ms=self.clock
        )
        signers = [key_for(n) for n in self.names() if did_for(n) in self.state.validator_set]
        return commit_with_keys(block, signers, self.chain)

    def commit(self, txs: Sequence[Transaction], proposer: str = "alice") -> Block:
        block = self.next_block(txs, proposer)
        self.state = self.state.apply(block)
        self.ledger.append(block)
        self.blocks.append(block)
        return block

    def names(self) -> list[str]:
        names = [m["name"] for m in self.document["members"]]
        names += [m.name for m in self.state.members.values() if m.name not in names]
        return names

    def blob(self, data: bytes) -> str:
        return self.ledger.blobs.put(data)


def make_consortium(
    root: Path,
    members: Sequence[tuple[str, list[str], int]] = FOUR,
    *,
    initial_bytes: bytes = b"initial-model:" + bytes(range(256)),
    **document_options: Any,
) -> Consortium:
    """A consortium on a fresh home; ``initial_bytes`` are the initial model blob's content."""
    home = Home.resolve(root)
    home.ensure()
    from bcfl_cli.store.blobs import BlobStore

    initial = BlobStore(home.blob_dir).put(initial_bytes)
    document = make_document(members, initial, **document_options)
    genesis = make_genesis(document)
    ledger = Ledger.create(home, genesis, document)
    state = ChainState.from_genesis(genesis, document)
    return Consortium(home, document, genesis, ledger, state)


def update_body(c: Consortium, round: int, payload: bytes, *, store: bool = True) -> dict[str, Any]:
    blob = c.blob(payload) if store else hashlib.sha256(payload).hexdigest()
    return {
        "round": round,
        "base_model": c.state.round.model if not c.state.round.open else c.state.round.base_model,
        "blob": blob,
        "blob_size": len(payload),
        "num_samples": 100,
        "metrics": {"loss": "0.5"},
    }


def validation(
    c: Consortium, update: Transaction, verdict: str = "accept", proposer: str = "alice"
):
    reason = "ok" if verdict == "accept" else "norm_exceeded"
    return c.tx(
        proposer,
        TxKind.VALIDATION,
        {"update": update.hash, "verdict": verdict, "reason": reason, "detail": ""},
    )


def realistic_chain(root: Path) -> Consortium:
    """Genesis + join/approve + a full round (two accepted updates, one rejected) + aggregate."""
    c = make_consortium(root)
    join = c.tx("erin", TxKind.JOIN_REQUEST, {"name": "erin", "roles": ["trainer"], "power": 0})
    c.commit([join])
    c.commit(
        [
            c.tx("alice", TxKind.APPROVE_MEMBER, {"member": did_for("erin"), "request": join.hash}),
            c.tx("bob", TxKind.APPROVE_MEMBER, {"member": did_for("erin"), "request": join.hash}),
        ],
        proposer="bob",
    )
    c.commit(
        [
            c.tx(
                "alice",
                TxKind.OPEN_ROUND,
                {"round": 1, "base_model": c.state.round.model, "deadline_height": 3 + 5},
            )
        ]
    )
    u1 = c.tx("bob", TxKind.UPDATE, update_body(c, 1, b"update-bob" * 50))
    u2 = c.tx("erin", TxKind.UPDATE, update_body(c, 1, b"update-erin" * 50))
    u3 = c.tx("carol", TxKind.UPDATE, update_body(c, 1, b"update-carol-bad", store=False))
    c.commit(
        [
            u1,
            validation(c, u1),
            u2,
            validation(c, u2),
            u3,
            validation(c, u3, "reject"),
        ]
    )
    model = b"aggregate-1" * 40
    c.commit(
        [
            c.tx(
                "carol",
                TxKind.AGGREGATE,
                {
                    "round": 1,
                    "updates": sorted([u1.hash, u2.hash]),
                    "rule": "fedavg",
                    "params": c.state.config.aggregation_params,
                    "model": c.blob(model),
                    "model_size": len(model),
                },
            )
        ],
        proposer="carol",
    )
    return c


def drop_triggers(path) -> sqlite3.Connection:
    """What an attacker with the file does first: the append-only triggers are not security."""
    conn = sqlite3.connect(path, isolation_level=None)
    for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type='trigger'").fetchall():
        conn.execute(f"DROP TRIGGER {name}")
    return conn
