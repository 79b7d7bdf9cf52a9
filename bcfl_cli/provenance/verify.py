"""``verify_model``: check a model file against its proof bundle offline (PROTOCOL.md §9).

Trusts only the genesis hash given by the caller: no store, no network, no torch. The steps
follow §9.2, each a function raising one ``VerificationError`` with a code; the chain rules are
the ones verify-chain runs (``chain.state``: header links, validator set in force, commit
certificates, membership), applied to headers and the proven transactions only.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import BcflError, EncodingError, VerificationError
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.crypto import Domain, public_key_from_did, signing_message, verify_message
from bcfl_cli.protocol.merkle import merkle_root
from bcfl_cli.protocol.tx import Transaction, TxKind
from bcfl_cli.provenance.bundle import ModelProof, ProvenTx
from bcfl_cli.verify.report import Fault

#: Below this many signatures a process pool costs more (start-up) than it saves.
PARALLEL_MIN_SIGNATURES = 2000


@dataclass(frozen=True)
class UpdateRecord:
    """One update of a round, as the chain judged it."""

    tx: str
    author: str
    name: str
    verdict: str  # "accept" | "reject"
    reason: str
    num_samples: int
    metrics: dict[str, str]


@dataclass(frozen=True)
class RoundRecord:
    number: int
    opened_at: int
    closed_at: int
    base_model: str
    model: str
    rule: str
    params: dict[str, Any]
    aggregated: tuple[str, ...]
    updates: tuple[UpdateRecord, ...]


@dataclass
class ModelHistory:
    """What a verified proof shows about the model: the data of its model card."""

    chain: str
    consortium: str
    round: int
    model: str
    model_size: int | None  # None for the initial model (genesis states no size)
    height: int
    rule: str
    params: dict[str, Any]
    members: dict[str, dict[str, Any]] = field(default_factory=dict)  # did -> name, roles, ...
    rounds: list[RoundRecord] = field(default_factory=list)


@dataclass
class ProofReport:
    chain_id: str  # the pinned genesis hash
    round: int | None = None
    model: str = ""  # SHA-256 of the model file (empty when no file was given)
    height: int = -1  # the last header that verified
    headers: int = 0
    signatures: int = 0
    txs: int = 0
    proof_bytes: int = 0
    elapsed_s: float = 0.0
    fault: Fault | None = None
    history: ModelHistory | None = None

    @property
    def ok(self) -> bool:
        return self.fault is None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("history")
        data["ok"] = self.ok
        data["elapsed_s"] = round(self.elapsed_s, 3)
        return data


def verify_model(
    proof_data: bytes, genesis: str, model: Path | None = None, *, workers: int | None = None
) -> ProofReport:
    """Verify a proof bundle against the pinned ``genesis`` hash, and ``model`` against it.

    Never raises for what the bundle or the file hold: the first fault is the report's.
    Without ``model`` the chain part alone is checked (what the model card needs).
    ``workers``: processes for signatures on long proofs (default: all cores; 1: in-process).
    """
    started = time.perf_counter()
    report = ProofReport(chain_id=genesis, proof_bytes=len(proof_data))
    try:
        proof = read_proof(proof_data)
        report.round = proof.round
        state = verify_genesis(proof, genesis)
        report.height, report.headers = 0, 1
        state = verify_headers(proof, state, report, workers)
        history = verify_rounds(proof, state)
        if model is not None:
            report.model = verify_model_file(model, history)
        report.history = history
    except VerificationError as exc:
        report.fault = Fault.from_error(exc)
    except (BcflError, ValueError, KeyError, TypeError, RecursionError) as exc:
        # a defect no step names (a bug, or input no rule foresaw): still a verdict, not a crash
        message = exc.message if isinstance(exc, BcflError) else f"{type(exc).__name__}: {exc}"
        report.fault = Fault(None, None, "proof_malformed", f"proof bundle: {message}")
    report.elapsed_s = time.perf_counter() - started
    return report


# --- §9.2 steps ---------------------------------------------------------------------------------
def read_proof(data: bytes) -> ModelProof:
    """1. Read: a bounded, strict parse; any defect is ``proof_malformed``."""
    try:
        return ModelProof.from_bytes(data)
    except EncodingError as exc:
        raise VerificationError(
            f"proof bundle: {exc.message}", code="proof_malformed", height=None
        ) from exc


def verify_genesis(proof: ModelProof, pinned: str) -> ChainState:
    """2. Genesis: the first header is the pinned genesis and the document is its config."""
    header = proof.headers[0]
    if proof.chain != pinned:
        raise VerificationError(
            f"genesis hash: expected {pinned} (pinned), the proof names {proof.chain}: "
            "this proof is from another consortium",
            height=0,
            code="genesis_hash_mismatch",
        )
    if header.hash != pinned:
        raise VerificationError(
            f"genesis hash: expected {pinned} (pinned), found {header.hash}: "
            "this proof is from another consortium, or its genesis was altered",
            height=0,
            code="genesis_hash_mismatch",
        )
    return ChainState.from_genesis(Block(header, (), None), proof.genesis)


def verify_headers(
    proof: ModelProof, state: ChainState, report: ProofReport, workers: int | None = None
) -> ChainState:
    """3-4. Each header links to the previous one and is certified by more than 2/3 of the
    validator set in force (§6.2.1, §6.2.3, §6.2.4); the proven transactions of each block are
    in it (the block's hashes have its ``tx_root``) and obey the common rules; membership
    transactions move the validator set for the next height (§6.3).

    Signatures dominate (one Ed25519 check is ~70 us): on a long proof they are checked on a
    process pool while the rules replay without them; should any fail, the replay runs again
    with them, so that the fault reported is the first in the protocol's order.
    """
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    total = sum(len(c.signatures) for c in proof.commits) + len(proof.txs)
    if n_workers <= 1 or total < PARALLEL_MIN_SIGNATURES:
        return _replay(proof, state, report, verify_signatures=True)
    start = (report.height, report.headers)
    jobs = _signature_jobs(proof, state.chain_id)
    size = -(-len(jobs) // (n_workers * 2))
    rule_fault: VerificationError | None = None
    try:
        with ProcessPoolExecutor(n_workers, mp_context=_mp_context()) as pool:
            batches = [
                pool.submit(_check_signatures, jobs[i : i + size])
                for i in range(0, len(jobs), size)
            ]
            try:
                after = _replay(proof, state, report, verify_signatures=False)
            except VerificationError as exc:
                rule_fault = exc
            signatures_ok = all(batch.result() for batch in batches)
    except (OSError, RuntimeError):  # no processes to be had, or a worker died: do it here
        signatures_ok = False
    if signatures_ok:
        if rule_fault is not None:
            raise rule_fault
        return after
    report.height, report.headers = start
    report.signatures = report.txs = 0
    return _replay(proof, state, report, verify_signatures=True)


def _replay(
    proof: ModelProof, state: ChainState, report: ProofReport, *, verify_signatures: bool
) -> ChainState:
    by_height: dict[int, list[ProvenTx]] = {}
    for proven in proof.txs:
        by_height.setdefault(proven.height, []).append(proven)
    for height in range(1, len(proof.headers)):
        header = proof.headers[height]
        commit = proof.commits[height - 1]
        included = by_height.get(height, [])
        txs = check_inclusion(height, proof.bodies.get(height, ()), included, header.tx_root)
        state = state.apply_proven(header, commit, txs, verify_signatures=verify_signatures)
        report.height, report.headers = height, report.headers + 1
        report.signatures += len(commit.signatures) + len(txs)
        report.txs += len(txs)
    return state


#: One signature check for a worker: (public key, signed message, signature).
_Job = tuple[bytes, bytes, bytes]
#: What a signature signs is ``DOMAIN || 0x00 || digest`` (PROTOCOL.md §2).
_VOTE_PREFIX = signing_message(Domain.VOTE, "")
_TX_PREFIX = signing_message(Domain.TX, "")


def _signature_jobs(proof: ModelProof, chain_id: str) -> list[_Job]:
    """Every commit and transaction signature of the proof; malformed ones are left to the
    replay (which names them), so building the list never raises."""
    jobs: list[_Job] = []
    for commit in proof.commits:
        digests = commit.precommit_digests(chain_id)
        for (did, sig), digest in zip(commit.signatures, digests, strict=True):
            jobs.append((public_key_from_did(did), _VOTE_PREFIX + digest, bytes.fromhex(sig)))
    for proven in proof.txs:
        tx = proven.tx
        message = _TX_PREFIX + bytes.fromhex(tx.hash)
        jobs.append((public_key_from_did(tx.author), message, bytes.fromhex(tx.signature)))
    return jobs


def _check_signatures(jobs: list[_Job]) -> bool:
    """Worker: whether every signature of the batch is valid."""
    return all(verify_message(key, message, sig) for key, message, sig in jobs)


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork where the platform has it (workers start in milliseconds; they only verify)."""
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def check_inclusion(
    height: int, hashes: tuple[str, ...], included: list[ProvenTx], tx_root: str
) -> list[Transaction]:
    """The block's transaction hashes have its ``tx_root`` (§4), and each proven transaction
    hashes to the entry at its index."""
    if not included:
        return []
    root = merkle_root(list(hashes))
    if root != tx_root:
        raise VerificationError(
            f"block {height}: tx_root: expected {tx_root}, the proof's hashes give {root}",
            height=height,
            code="tx_root_mismatch",
        )
    for proven in included:
        tx_hash = proven.tx.hash
        if hashes[proven.index] != tx_hash:
            raise VerificationError(
                f"block {height}, tx {tx_hash[:16]}: not in the block (index {proven.index} "
                f"holds {hashes[proven.index][:16]})",
                height=height,
                tx_hash=tx_hash,
                code="tx_not_included",
            )
    return [p.tx for p in included]


def verify_rounds(proof: ModelProof, state: ChainState) -> ModelHistory:
    """5. Rounds 1..r: each opened on the previous round's model, each update followed by its
    validation, every aggregated update present, and round r's aggregate in the last block."""
    config = state.config
    history = ModelHistory(
        chain=state.chain_id,
        consortium=config.name,
        round=proof.round,
        model=config.initial_model,
        model_size=None,
        height=proof.height,
        rule=config.aggregation_rule,
        params=config.aggregation_params,
        members={
            m.did: {
                "name": m.name,
                "roles": list(m.roles),
                "power": m.power,
                "status": m.status,
                "since": m.since,
            }
            for m in state.members.values()
        },
    )
    rounds = _collect_rounds(proof)
    model = config.initial_model
    for number in range(1, proof.round + 1):
        found = rounds.get(number)
        if found is None or found.aggregate is None or found.opened is None:
            raise VerificationError(
                f"round {number} of the model's history is missing from the proof "
                "(its open_round and aggregate must be included)",
                code="round_missing",
            )
        record = found.record(number, model, state)
        model = record.model
        history.rounds.append(record)
    if proof.round > 0:
        last = rounds[proof.round]
        assert last.aggregate is not None
        if last.aggregate.height != proof.height:
            raise VerificationError(
                f"round {proof.round}'s aggregate is at height {last.aggregate.height}, "
                f"but the proof ends at {proof.height}",
                height=proof.height,
                code="aggregate_missing",
            )
        history.model = model
        history.model_size = int(last.aggregate.tx.body["model_size"])
    elif proof.height != 0:
        raise VerificationError(
            "the initial model's proof is the genesis alone", code="aggregate_missing"
        )
    return history


def verify_model_file(path: Path, history: ModelHistory) -> str:
    """6. The model file's SHA-256 (and size) are the aggregate's ``model`` (``model_size``)."""
    digest = hashlib.sha256()
    size = 0
    # a file longer than the size the chain states is wrong whatever follows: stop reading
    # there (a named pipe or device never ends)
    limit = None if history.model_size is None else history.model_size + 1
    try:
        with path.open("rb") as f:
            while chunk := f.read(1024 * 1024 if limit is None else min(1 << 20, limit - size)):
                digest.update(chunk)
                size += len(chunk)
                if limit is not None and size >= limit:
                    break
    except OSError as exc:
        raise VerificationError(f"model file {path}: {exc}", code="model_unreadable") from exc
    found = digest.hexdigest()
    where = f"round {history.round}'s " + ("aggregate" if history.round else "initial model")
    if found != history.model:
        raise VerificationError(
            f"model file: {where} names {history.model}, the file hashes to {found}",
            height=history.height,
            code="model_hash_mismatch",
        )
    if history.model_size is not None and size != history.model_size:
        raise VerificationError(
            f"model file: {where} states {history.model_size} bytes, found {size}",
            height=history.height,
            code="model_size_mismatch",
        )
    return found


# --- rounds from the proven transactions ---------------------------------------------------------
@dataclass
class _Round:
    opened: ProvenTx | None = None
    aggregate: ProvenTx | None = None
    updates: list[tuple[ProvenTx, ProvenTx | None]] = field(default_factory=list)

    def record(self, number: int, previous_model: str, state: ChainState) -> RoundRecord:
        assert self.opened is not None and self.aggregate is not None
        opened, aggregate = self.opened.tx.body, self.aggregate.tx.body
        if opened["base_model"] != previous_model:
            raise VerificationError(
                f"round {number} opened on {opened['base_model']}, expected the previous "
                f"model {previous_model}",
                height=self.opened.height,
                tx_hash=self.opened.tx.hash,
                code="lineage_broken",
            )
        records = []
        for update, validation in self.updates:
            if validation is None:
                raise VerificationError(
                    f"update {update.tx.hash[:16]} of round {number}: its validation (the next "
                    "transaction of its block) is missing from the proof",
                    height=update.height,
                    tx_hash=update.tx.hash,
                    code="validation_missing",
                )
            body, verdict = update.tx.body, validation.tx.body
            records.append(
                UpdateRecord(
                    tx=update.tx.hash,
                    author=update.tx.author,
                    name=state.name_of(update.tx.author),
                    verdict=str(verdict["verdict"]),
                    reason=str(verdict["reason"]),
                    num_samples=int(body["num_samples"]),
                    metrics=dict(body["metrics"]),
                )
            )
        known = {r.tx for r in records if r.verdict == "accept"}
        missing = [h for h in aggregate["updates"] if h not in known]
        if missing:
            raise VerificationError(
                f"round {number}'s aggregate names update {missing[0][:16]}, which the proof "
                "does not show accepted",
                height=self.aggregate.height,
                tx_hash=self.aggregate.tx.hash,
                code="update_missing",
            )
        return RoundRecord(
            number=number,
            opened_at=self.opened.height,
            closed_at=self.aggregate.height,
            base_model=str(opened["base_model"]),
            model=str(aggregate["model"]),
            rule=str(aggregate["rule"]),
            params=dict(aggregate["params"]),
            aggregated=tuple(aggregate["updates"]),
            updates=tuple(records),
        )


def _collect_rounds(proof: ModelProof) -> dict[int, _Round]:
    """Round number -> its proven transactions; a validation pairs with the update just
    before it in the same block (§6.3), and only an update's own validation counts."""
    rounds: dict[int, _Round] = {}
    previous: ProvenTx | None = None
    for proven in proof.txs:
        tx = proven.tx
        if tx.kind is TxKind.VALIDATION and previous is not None:
            pending = previous.tx
            if (
                pending.kind is TxKind.UPDATE
                and previous.height == proven.height
                and previous.index + 1 == proven.index
                and tx.body["update"] == pending.hash
            ):
                entry = rounds.setdefault(int(pending.body["round"]), _Round())
                entry.updates[-1] = (previous, proven)
        elif tx.kind in (TxKind.OPEN_ROUND, TxKind.UPDATE, TxKind.AGGREGATE):
            entry = rounds.setdefault(int(tx.body["round"]), _Round())
            if tx.kind is TxKind.OPEN_ROUND:
                entry.opened = entry.opened or proven
            elif tx.kind is TxKind.AGGREGATE:
                entry.aggregate = entry.aggregate or proven
            else:
                entry.updates.append((proven, None))
        previous = proven
    return rounds


__all__ = [
    "ModelHistory",
    "ProofReport",
    "RoundRecord",
    "UpdateRecord",
    "verify_model",
]
