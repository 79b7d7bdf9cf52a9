"""``verify_chain``: re-derive everything from the genesis, trusting nothing in the store.

Signatures dominate the cost (Ed25519 verification is ~14k/s per core). For long chains this
process reads and parses each block once, replays the rules with signature checks switched off,
and queues each block's signature checks (public key, signed message, signature) and blob checks
in batches of blocks, which helper processes check while the replay goes on and this process
shares once it is done (``sharing.py``): one busy process a core. The first fault is the lowest
height where either found one; in the same block, the block is re-examined with signatures on
so that the order inside it is the protocol's, and a blob fault (checked after the rules) loses
to a rule fault.
"""

from __future__ import annotations

import contextlib
import gc
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bcfl_cli.chain.checks import AppChecks
from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import BcflError, VerificationError
from bcfl_cli.primitives import BatchResult, BlobStatus, Job, check_batch
from bcfl_cli.protocol.block import Block, ValidatorSet
from bcfl_cli.protocol.crypto import Domain, public_key_from_did, signing_message
from bcfl_cli.store.blobs import BlobStore
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import anchor, steps
from bcfl_cli.verify.anchor import Anchors
from bcfl_cli.verify.report import Fault, Report
from bcfl_cli.verify.sharing import SharedChecks

#: Faults of the FL checks that a missing update blob causes (named ``blob_missing`` then).
_FL_CHECK_FAULTS = frozenset({"verdict_mismatch", "update_check_failed", "aggregate_check_failed"})
#: Below this many blocks a process pool costs more (start-up) than it saves.
PARALLEL_MIN_BLOCKS = 400
#: Blocks per batch handed to a worker (~1,000 signatures: large enough to amortise the hand-off,
#: small enough that the workers start early and finish soon after the replay).
CHUNK_BLOCKS = 100

Progress = Callable[[int, int], None]
#: What a signature signs is ``DOMAIN || 0x00 || digest`` (PROTOCOL.md §2).
_VOTE_PREFIX = signing_message(Domain.VOTE, "")
_TX_PREFIX = signing_message(Domain.TX, "")
#: One check for a helper (``primitives.check_batch``): (public key, message, signature) or
#: (None, blob hash, size or None); a batch's answer: signatures checked, blobs checked, and
#: the first failing job if any (its index in the batch, the blob status, the size found).
_Job = Job
_BatchResult = BatchResult


@dataclass
class Verified:
    """A report and, when the chain verified, what the checks after it need: the state after
    the last block, and every validator set the chain used (by hash), to check a peer's block
    at any verified height (``bcfl_cli.node.compare``)."""

    report: Report
    state: ChainState | None = None
    validator_sets: dict[str, ValidatorSet] = field(default_factory=dict)


def verify_chain(
    ledger: Ledger,
    *,
    deep: bool = False,
    checks: AppChecks | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    anchors: Anchors | None = None,
    models_only: bool = False,
) -> Report:
    """Verify the whole stored chain; the report's ``fault`` is the first broken rule, if any.

    ``deep`` re-runs the FL contract and aggregation through ``checks`` (required when deep).
    ``workers``: processes for signatures, this one included (default: all cores; 1 verifies
    in-process).
    ``anchors``: the genesis and heads known from outside the store (§8.6), all checked.
    ``models_only``: the store of a member that trains without validating, which holds the
    models but not the other members' updates: a block whose update blobs are missing is
    checked without the FL checks, its rounds listed in ``report.unverified_rounds``, and a
    missing update blob is no fault (a corrupt one still is; every model must be there).
    """
    return verify_chain_state(
        ledger,
        deep=deep,
        checks=checks,
        workers=workers,
        progress=progress,
        anchors=anchors,
        models_only=models_only,
    ).report


def verify_chain_state(
    ledger: Ledger,
    *,
    deep: bool = False,
    checks: AppChecks | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    anchors: Anchors | None = None,
    models_only: bool = False,
) -> Verified:
    """:func:`verify_chain`, keeping the final state and validator sets for later checks."""
    if deep and checks is None:
        raise BcflError("deep verification needs the FL checks (AppChecks)")
    started = time.perf_counter()
    anchors = anchors or Anchors()
    verified = Verified(Report(chain_id=ledger.genesis_hash, deep=deep, models_only=models_only))
    report = verified.report
    report.anchors = _anchor_rows(anchors)
    try:
        report.stored_height = ledger.height
        with _older_objects_frozen():
            _verify(ledger, verified, checks if deep else None, workers, progress, anchors)
    except VerificationError as exc:
        report.fault = Fault.from_error(exc)
        verified.state = None
    report.elapsed_s = time.perf_counter() - started
    return verified


@contextlib.contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """The caller's objects kept out of the garbage collector's way for the pass (``gc.freeze``).

    A pass allocates millions of short-lived objects, which set off full collections; each
    walked every object of the calling process (~0.1 CPU-s with torch imported, 210,000
    objects) and, with the helpers forked, wrote to every page holding one: ~11,500
    copy-on-write page faults a pass. Frozen, a full collection walks only what the pass made.
    Nothing is kept alive by it: ``gc.unfreeze`` hands the objects back to the oldest
    generation afterwards. A caller that froze objects itself, or disabled the collector,
    is left as it is.
    """
    if gc.get_freeze_count() or not gc.isenabled():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _anchor_rows(anchors: Anchors) -> list[dict[str, Any]]:
    """The report's list of anchors; ``ok`` stays ``None`` until checked."""
    rows: list[dict[str, Any]] = []
    if anchors.genesis is not None:
        rows.append(
            {
                "anchor": "genesis",
                "source": "--genesis",
                "height": 0,
                "hash": anchors.genesis.lower(),
                "ok": None,
            }
        )
    if anchors.pin is not None:
        rows.append(
            {
                "anchor": "genesis",
                "source": "pin",
                "height": 0,
                "hash": anchors.pin.genesis,
                "ok": None,
            }
        )
    for source, height, digest in anchors.heads():
        rows.append(
            {"anchor": "head", "source": source, "height": height, "hash": digest, "ok": None}
        )
    return rows


def _mark(report: Report, kind: str, source: str, ok: bool) -> None:
    for row in report.anchors:
        if row["anchor"] == kind and row["source"] == source:
            row["ok"] = ok


def _check_genesis_anchors(report: Report, anchors: Anchors, genesis_hash: str) -> None:
    try:
        anchor.check_genesis(anchors, genesis_hash)
    except VerificationError as exc:
        _mark(report, "genesis", "--genesis" if exc.code == "untrusted_genesis" else "pin", False)
        raise
    for row in report.anchors:
        if row["anchor"] == "genesis":
            row["ok"] = True


def _check_head_anchors(report: Report, anchors: Anchors, seen: dict[int, str]) -> None:
    for source, height, digest in anchors.heads():
        try:
            anchor.check_head(source, height, digest, report.height, seen.get(height))
        except VerificationError:
            _mark(report, "head", source, False)
            raise
        _mark(report, "head", source, True)


def _verify(
    ledger: Ledger,
    verified: Verified,
    checks: AppChecks | None,
    workers: int | None,
    progress: Progress | None,
    anchors: Anchors,
) -> None:
    report = verified.report
    top = report.stored_height
    genesis = next(steps.read_blocks(ledger, 0, 0))
    state = steps.verify_genesis(ledger, genesis)
    _check_genesis_anchors(report, anchors, genesis.hash)
    report.height, report.head, report.blocks, report.blobs = 0, genesis.hash, 1, 2
    verified.validator_sets[state.validator_set.hash] = state.validator_set
    watch = {height for _, height, _ in anchors.heads()}
    seen = {0: genesis.hash} if 0 in watch else {}
    if top > 0:
        state = _verify_blocks(ledger, verified, state, checks, workers, progress, watch, seen)
    _check_head_anchors(report, anchors, seen)
    verified.state = state


def _verify_blocks(
    ledger: Ledger,
    verified: Verified,
    state: ChainState,
    checks: AppChecks | None,
    workers: int | None,
    progress: Progress | None,
    watch: set[int],
    seen: dict[int, str],
) -> ChainState:
    """Steps 3-5 for blocks 1..top; the state after the last block."""
    report = verified.report
    top = report.stored_height
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers <= 1 or top < PARALLEL_MIN_BLOCKS:
        return _Replay(ledger, verified, checks, progress, watch=watch, seen=seen).run(state, top)
    with SharedChecks(n_workers - 1, check_batch, str(ledger.blobs.root)) as pool:
        offload = _Offload(
            pool,
            ledger.genesis_hash,
            str(ledger.blobs.root),
            models_only=verified.report.models_only,
        )
        replay = _Replay(
            ledger, verified, checks, progress, offload=offload, watch=watch, seen=seen
        )
        rule_fault: VerificationError | None = None
        try:
            state = replay.run(state, top)
        except VerificationError as exc:
            rule_fault = exc
        offload.flush()
        worker_fault = offload.first_fault()
        report.signatures += offload.signatures
        report.blobs += offload.blobs
    if worker_fault is None:
        if rule_fault is not None:
            raise rule_fault
        return state
    fault, after_rules = worker_fault
    height = fault.height
    assert height is not None
    if rule_fault is not None and rule_fault.height is not None:
        if rule_fault.height < height or (rule_fault.height == height and after_rules):
            raise rule_fault
        if rule_fault.height == height:
            # with --models-only, the FL checks may lack their blobs: the order is what counts
            fl_checks = None if verified.report.models_only else checks
            _reexamine(ledger, replay.before, rule_fault, fl_checks)
    # the worker's fault comes first: only the blocks below it verified
    report.height = height - 1
    report.head = ledger.block(report.height).hash
    report.blocks = height
    raise fault


def _reexamine(
    ledger: Ledger,
    before: ChainState | None,
    rule_fault: VerificationError,
    checks: AppChecks | None,
) -> None:
    """Both kinds of fault in one block: apply it with signatures on, for the protocol's order."""
    height = rule_fault.height
    if before is None or height is None or before.height != height - 1:
        raise rule_fault  # the block could not even be read
    try:
        block = ledger.block(height)
    except BcflError:
        raise rule_fault from None
    steps.apply_block(before, block, checks=checks, signatures_verified=False)
    raise rule_fault


#: What the replay knows about a job, to name the fault if a worker finds one:
#: (height, tx hash or None for a commit signature, signer did or what the blob is,
#: blob hash or None for a signature, size claimed).
_JobInfo = tuple[int, str | None, str, str | None, int | None]


class _Offload:
    """Signature and blob checks of the replayed blocks, in batches, shared with helpers."""

    def __init__(
        self,
        pool: SharedChecks[_Job, _BatchResult],
        chain_id: str,
        blob_root: str,
        *,
        models_only: bool,
    ) -> None:
        self.pool = pool
        self.chain_id = chain_id
        self.blob_root = blob_root
        self.models_only = models_only
        self.store = BlobStore(Path(blob_root))
        self.jobs: list[_Job] = []
        self.infos: list[_JobInfo] = []
        self.blocks = 0
        self.batches: list[list[_JobInfo]] = []
        self.signatures = 0
        self.blobs = 0

    def add(self, block: Block) -> None:
        """Queue every signature of ``block`` (commit first, then transactions, as §6.2-§6.3
        check them) and then its blobs (checked after the rules, §8)."""
        h = block.height
        jobs, infos = self.jobs, self.infos
        commit = block.commit
        if commit is not None:
            digests = commit.precommit_digests(self.chain_id)
            for (did, sig), digest in zip(commit.signatures, digests, strict=True):
                jobs.append((public_key_from_did(did), _VOTE_PREFIX + digest, bytes.fromhex(sig)))
                infos.append((h, None, did, None, None))
        for tx in block.txs:
            tx_hash = tx.hash
            message = _TX_PREFIX + bytes.fromhex(tx_hash)
            jobs.append((public_key_from_did(tx.author), message, bytes.fromhex(tx.signature)))
            infos.append((h, tx_hash, tx.author, None, None))
        for tx_hash, blob, size, what in steps.block_blobs(block):
            if self.models_only and what == "update" and not self.store.has(blob):
                continue  # a trainer-only member's store: the replay lists the round
            jobs.append((None, blob, size))
            infos.append((h, tx_hash, what, blob, size))
        self.blocks += 1
        if self.blocks >= CHUNK_BLOCKS:
            self.flush()

    def flush(self) -> None:
        if self.jobs:
            self.pool.submit(self.jobs)
            self.batches.append(self.infos)
        self.jobs, self.infos, self.blocks = [], [], 0

    def first_fault(self) -> tuple[VerificationError, bool] | None:
        """The first failing check in chain order, and whether it comes after the rules (a
        blob) rather than with them (a signature); counts what the workers checked."""
        found: tuple[VerificationError, bool] | None = None
        results = self.pool.results()
        for infos, result in zip(self.batches, results, strict=True):  # in height order
            signatures, blobs, failed = result
            self.signatures += signatures
            self.blobs += blobs
            if failed is not None and found is None:
                index, status, size = failed
                found = _fault_of(infos[index], status, size)
        return found


def _fault_of(
    info: _JobInfo, status: BlobStatus | None, size: int
) -> tuple[VerificationError, bool]:
    h, tx, who, blob, claimed = info
    if blob is None:
        if tx is None:
            error = VerificationError(
                f"block {h}: commit signature of {who} is invalid",
                height=h,
                code="bad_commit_signature",
            )
        else:
            error = VerificationError(
                f"block {h}, tx {tx[:16]}: signature of author {who} is invalid",
                height=h,
                tx_hash=tx,
                code="bad_tx_signature",
            )
        return error, False
    blob_error = steps.blob_fault(blob, claimed, status or "ok", size, height=h, tx=tx, what=who)
    assert blob_error is not None
    return blob_error, True


class _Replay:
    """Rules block by block, counting into the report; signatures and blobs too, unless an
    ``offload`` takes them to the pool."""

    def __init__(
        self,
        ledger: Ledger,
        verified: Verified,
        checks: AppChecks | None,
        progress: Progress | None,
        *,
        offload: _Offload | None = None,
        watch: set[int] | None = None,
        seen: dict[int, str] | None = None,
    ) -> None:
        self.ledger = ledger
        self.report = verified.report
        self.validator_sets = verified.validator_sets
        self.watch = watch or set()
        self.seen = seen if seen is not None else {}
        self.checks = checks
        self.progress = progress
        self.offload = offload
        self.before: ChainState | None = None  # the state under the block being applied
        self.partial_rounds: set[int] = set()  # rounds with an update blob missing here

    def _checks_for(self, block: Block) -> AppChecks | None:
        """The FL checks for ``block``: none where this store lacks an update blob they read
        (``models_only``: the rounds are listed; else a ``blob_missing`` fault that says so,
        instead of a verdict that differs only because the blob is not here)."""
        if self.checks is None or not self.report.models_only:
            return self.checks
        missing = steps.missing_update_blobs(self.ledger.blobs, block)
        rounds = {number for _, _, number, _ in missing}
        rounds |= steps.aggregated_rounds(block) & self.partial_rounds
        if not rounds:
            return self.checks
        self.partial_rounds |= rounds
        self.report.unverified_rounds = sorted(set(self.report.unverified_rounds) | rounds)
        return None

    def _named(self, block: Block, fault: VerificationError) -> VerificationError:
        """A deep check that failed because an accepted update's blob is not in this store,
        named as that (``blob_missing``, with the way to verify such a store), not as a
        verdict or aggregate that differs only because the blob is not here."""
        if self.checks is None or fault.code not in _FL_CHECK_FAULTS:
            return fault
        for tx_hash, blob, number, accepted in steps.missing_update_blobs(self.ledger.blobs, block):
            if accepted:
                return VerificationError(
                    f"update blob {blob} of round {number} is missing, so round {number} "
                    "cannot be recomputed; a member that trains without validating holds "
                    "only the models: verify-chain --deep --models-only checks the rest and "
                    "lists the rounds it could not recompute",
                    height=block.height,
                    tx_hash=tx_hash,
                    code="blob_missing",
                )
        return fault

    def run(self, state: ChainState, end: int) -> ChainState:
        report = self.report
        offload = self.offload
        for block in steps.read_blocks(self.ledger, state.height + 1, end):
            self.before = state
            if offload is not None:
                offload.add(block)  # before the rules: a rule fault here still needs them
            try:
                state = steps.apply_block(
                    state,
                    block,
                    checks=self._checks_for(block),
                    signatures_verified=offload is not None,
                )
            except VerificationError as fault:
                raise self._named(block, fault) from None
            if offload is None:
                report.signatures += steps.count_signatures(block)
                report.blobs += steps.verify_block_blobs(
                    self.ledger.blobs, block, models_only=report.models_only
                )
            report.height, report.head = block.height, state.head_hash
            self.validator_sets.setdefault(state.validator_set.hash, state.validator_set)
            if block.height in self.watch:
                self.seen[block.height] = block.hash
            report.blocks += 1
            report.txs += len(block.txs)
            for tx in block.txs:
                report.tx_kinds[str(tx.kind)] = report.tx_kinds.get(str(tx.kind), 0) + 1
            if self.progress is not None:
                self.progress(block.height, report.stored_height)
        return state
