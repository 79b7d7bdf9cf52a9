"""The FL hooks of the chain rules: verdicts and aggregates recomputed from the blob store."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import nacl.signing
import pytest
import torch

from bcfl_cli.chain import ChainState, build_block, commit_with_keys
from bcfl_cli.errors import BlobError, ContractError, VerificationError
from bcfl_cli.fl.aggregation import UpdateInput, aggregate
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.fl.models import initial_state, initial_state_bytes
from bcfl_cli.fl.tensors import decode_tensors, encode_tensors
from bcfl_cli.protocol.block import ZERO_HASH, Block, BlockHeader, ValidatorSet
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.encoding import hash_object
from bcfl_cli.protocol.merkle import merkle_root
from bcfl_cli.protocol.spec import AggregationSpec, ContractRules, ModelSpec, TrainingPlan
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx
from bcfl_cli.store.blobs import BlobStore

SPEC = ModelSpec(architecture="mlp", input_shape=[4], num_classes=3, hidden=[6])
NAMES = ("alice", "bob", "carol", "dave")
T0 = 1_700_000_000_000


def key(name: str) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(b"fl-checks:" + name.encode()).digest())


def did(name: str) -> str:
    return did_from_public_key(bytes(key(name).verify_key))


class Chain:
    """A four-member consortium replayed in memory, with FL checks on every block."""

    def __init__(self, root: Path, rule: str = "fedavg") -> None:
        self.blobs = BlobStore(root / "blobs")
        self.checks = FLChecks(self.blobs)
        initial = self.blobs.put(initial_state_bytes(SPEC))
        self.document: dict[str, Any] = {
            "v": 1,
            "consortium": {"name": "T", "admission_approvals": 2, "removal_approvals": 2},
            "members": [
                {"name": n, "did": did(n), "roles": ["trainer", "validator"], "power": 1}
                for n in NAMES
            ],
            "model": SPEC.to_document(),
            "training": TrainingPlan(min_updates=2, deadline_blocks=5).to_document(),
            "contract": ContractRules(max_update_norm=10.0).to_document(),
            "aggregation": AggregationSpec(rule=rule, trim_beta=0.2, krum_m=2).to_document(),
            "initial_model": initial,
        }
        vs = ValidatorSet.from_mapping({did(n): 1 for n in NAMES})
        header = BlockHeader(
            0, ZERO_HASH, T0, "", merkle_root([]), vs.hash, hash_object(self.document)
        )
        self.head = Block(header, (), None)
        self.state = ChainState.from_genesis(self.head, self.document)
        self.clock = T0

    def tx(self, name: str, kind: TxKind, body: dict[str, Any]) -> Transaction:
        self.clock += 1
        return make_tx(key(name), self.chain_id, kind, body, time_ms=self.clock)

    @property
    def chain_id(self) -> str:
        return self.state.chain_id

    def block(self, txs: list[Transaction]) -> Block:
        self.clock += 10
        b = build_block(self.state, self.head, txs, key("alice"), time_ms=self.clock)
        return commit_with_keys(b, [key(n) for n in NAMES], self.chain_id)

    def commit(self, txs: list[Transaction]) -> None:
        b = self.block(txs)
        self.state = self.state.apply(b, checks=self.checks)
        self.head = b

    def open_round(self) -> None:
        rnd = self.state.round
        body = {
            "round": rnd.number + 1,
            "base_model": rnd.model,
            "deadline_height": self.state.height + 1 + 5,
        }
        self.commit([self.tx("alice", TxKind.OPEN_ROUND, body)])

    def update(self, name: str, delta: dict[str, torch.Tensor], *, store: bool = True, n: int = 50):
        data = encode_tensors(delta)
        blob = self.blobs.put(data) if store else hashlib.sha256(data).hexdigest()
        body = {
            "round": self.state.round.number,
            "base_model": self.state.round.base_model,
            "blob": blob,
            "blob_size": len(data),
            "num_samples": n,
            "metrics": {},
        }
        return self.tx(name, TxKind.UPDATE, body)

    def validated(self, update: Transaction) -> list[Transaction]:
        verdict = self.checks.check_update(self.state, update)
        return [update, self.tx("alice", TxKind.VALIDATION, verdict.body(update.hash))]

    def aggregate_tx(self, model: str | None = None, size: int | None = None) -> Transaction:
        rnd = self.state.round
        base = decode_tensors(self.blobs.get(rnd.base_model), max_bytes=1 << 24)
        updates = [
            UpdateInput(
                u.tx, decode_tensors(self.blobs.get(u.blob), max_bytes=1 << 24), u.num_samples
            )
            for u in rnd.accepted
        ]
        result = aggregate(self.state.config.aggregation, base, updates)
        body = {
            "round": rnd.number,
            "updates": rnd.accepted_hashes,
            "rule": result.rule,
            "params": result.params,
            "model": model or result.model_hash,
            "model_size": size or len(result.model_bytes),
        }
        return self.tx("alice", TxKind.AGGREGATE, body)


def delta(value: float) -> dict[str, torch.Tensor]:
    return {k: torch.full_like(v, value) for k, v in initial_state(SPEC).items()}


def test_a_round_passes_the_deep_checks(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    bad = c.update("dave", delta(2.0))  # norm well above 10
    c.commit(
        c.validated(c.update("bob", delta(0.01)))
        + c.validated(c.update("carol", delta(0.03)))
        + c.validated(bad)
    )
    assert len(c.state.round.accepted) == 2
    agg = c.aggregate_tx()
    assert not c.blobs.has(agg.body["model"])
    c.commit([agg])
    assert not c.state.round.open
    assert c.state.round.model == agg.body["model"]
    assert c.blobs.has(agg.body["model"])
    new = decode_tensors(c.blobs.get(agg.body["model"]), max_bytes=1 << 24)
    init = initial_state(SPEC)
    name = sorted(init)[0]
    assert torch.allclose(new[name], init[name] + 0.02)


def test_a_false_verdict_breaks_the_block(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    bad = c.update("dave", delta(2.0))
    lie = c.tx(
        "alice",
        TxKind.VALIDATION,
        {"update": bad.hash, "verdict": "accept", "reason": "ok", "detail": ""},
    )
    with pytest.raises(VerificationError) as info:
        c.commit([bad, lie])
    assert info.value.code == "verdict_mismatch"


def test_a_missing_blob_is_rejected_as_missing(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    u = c.update("bob", delta(0.01), store=False)
    verdict = c.checks.check_update(c.state, u)
    assert (verdict.accept, verdict.reason) == (False, "blob_missing")
    c.commit(c.validated(u))
    assert c.state.round.accepted == ()


def test_an_oversized_claim_is_not_read(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    u = c.update("bob", delta(0.01))
    body = dict(u.body, blob_size=c.state.config.contract.max_blob_bytes + 1)
    big = c.tx("bob", TxKind.UPDATE, body)
    assert c.checks.check_update(c.state, big).reason == "blob_too_large"


def test_a_wrong_aggregate_breaks_the_block(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    c.commit(
        c.validated(c.update("bob", delta(0.01))) + c.validated(c.update("carol", delta(0.02)))
    )
    fake = c.blobs.put(encode_tensors(delta(0.5)))
    with pytest.raises(VerificationError) as info:
        c.commit([c.aggregate_tx(model=fake)])
    assert info.value.code == "aggregate_check_failed"
    assert "aggregate_mismatch" in info.value.message


@pytest.mark.parametrize(
    "rule", ["fedavg", "clipped", "median", "trimmed", "krum", "cosine", "cosine_trajectory"]
)
def test_arrival_order_does_not_change_the_model(tmp_path: Path, rule: str) -> None:
    models = []
    for order in (("bob", "carol", "dave"), ("dave", "carol", "bob")):
        c = Chain(tmp_path / "-".join(order), rule)
        c.open_round()
        values = {"bob": 0.01, "carol": -0.02, "dave": 0.033}
        txs: list[Transaction] = []
        for name in order:
            txs += c.validated(c.update(name, delta(values[name]), n=10 + len(name)))
        c.commit(txs)
        agg = c.aggregate_tx()
        c.commit([agg])
        models.append(agg.body["model"])
    assert models[0] == models[1]


def test_an_aggregate_of_nothing_keeps_the_base(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    body = {"round": 1, "updates": [], "model": c.state.round.base_model}
    agg = c.tx("alice", TxKind.AGGREGATE, {**body, "rule": "fedavg", "params": {}, "model_size": 1})
    c.checks.check_aggregate(c.state, agg)
    wrong = c.tx(
        "alice",
        TxKind.AGGREGATE,
        {**body, "model": "e" * 64, "rule": "fedavg", "params": {}, "model_size": 1},
    )
    with pytest.raises(ContractError):
        c.checks.check_aggregate(c.state, wrong)


def test_a_missing_update_blob_is_an_error_for_the_aggregate(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    u = c.update("bob", delta(0.01))
    c.commit(c.validated(u) + c.validated(c.update("carol", delta(0.02))))
    agg = c.aggregate_tx()
    c.blobs.path_for(u.body["blob"]).unlink()
    with pytest.raises(BlobError):
        c.checks.check_aggregate(c.state, agg)


def test_hooks_refuse_the_wrong_kind(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    u = c.update("bob", delta(0.01))
    with pytest.raises(ContractError):
        c.checks.check_aggregate(c.state, u)
    with pytest.raises(ContractError):
        c.checks.check_update(c.state, c.aggregate_tx())


def test_a_stored_blob_larger_than_the_limit_is_never_read(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    limit = c.state.config.contract.max_blob_bytes
    huge = c.blobs.path_for("f" * 64)
    huge.parent.mkdir(parents=True, exist_ok=True)
    with huge.open("wb") as f:
        f.truncate(limit + 1)  # sparse: the content does not matter, it must not be read
    u = c.update("bob", delta(0.01))
    lying = c.tx("bob", TxKind.UPDATE, dict(u.body, blob="f" * 64, blob_size=100))
    verdict = c.checks.check_update(c.state, lying)
    assert (verdict.accept, verdict.reason) == (False, "blob_too_large")


def test_an_update_is_checked_from_its_file_never_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = Chain(tmp_path)
    c.open_round()
    good, bad = c.update("bob", delta(0.01)), c.update("carol", delta(2.0))

    def whole(*_a: object, **_k: object) -> bytes:
        raise AssertionError("the contract read a whole blob")

    monkeypatch.setattr(c.blobs, "get", whole)
    assert c.checks.check_update(c.state, good).accept
    assert c.checks.check_update(c.state, bad).reason == "norm_exceeded"


def test_a_corrupt_local_copy_is_an_error_not_a_verdict(tmp_path: Path) -> None:
    c = Chain(tmp_path)
    c.open_round()
    u = c.update("bob", delta(0.01))
    path = c.blobs.path_for(u.body["blob"])
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(BlobError, match="corrupt"):
        c.checks.check_update(c.state, u)


@pytest.mark.parametrize("keep", [True, False])
def test_only_an_aggregate_kept_as_a_blob_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: bool
) -> None:
    """A recomputed model that becomes a blob must survive a crash; one that a verifier
    compares and drops (or holds as its next base) costs no fsync (~10 ms each)."""
    import bcfl_cli.fl.stored_aggregate as stored

    c = Chain(tmp_path)
    c.open_round()
    c.commit(
        c.validated(c.update("bob", delta(0.01))) + c.validated(c.update("carol", delta(0.03)))
    )
    agg = c.aggregate_tx()
    synced: list[int] = []
    real_fsync = stored.os.fsync

    def counting(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(stored.os, "fsync", counting)
    checks = FLChecks(c.blobs, keep_models=keep)
    checks.check_aggregate(c.state, agg)
    assert c.blobs.has(agg.body["model"]) is keep
    assert len(synced) == (1 if keep else 0)
