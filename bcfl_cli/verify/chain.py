"""``verify_chain``: re-derive everything from the genesis, trusting nothing in the store.

Signatures dominate the cost (Ed25519 verification is ~14k/s per core). For long chains this
process reads and parses each block once, replays the rules with signature checks switched off,
and hands each block's signature checks (public key, signed message, signature) and blob checks
to a process pool in batches of blocks, so that verification runs on all cores while the replay
goes on. The first fault is the lowest height where either found one; in the same block, the
block is re-examined with signatures on so that the order inside it is the protocol's, and a
blob fault (checked after the rules) loses to a rule fault.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from pathlib import Path

from bcfl_cli.chain.checks import AppChecks
from bcfl_cli.chain.state import ChainState
from bcfl_cli.errors import BcflError, VerificationError
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.crypto import Domain, public_key_from_did, signing_message, verify_message
from bcfl_cli.store.blobs import BlobStatus, BlobStore
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import steps
from bcfl_cli.verify.report import Fault, Report

#: Below this many blocks a process pool costs more (start-up) than it saves.
PARALLEL_MIN_BLOCKS = 400
#: Blocks per batch handed to a worker (~1,000 signatures: large enough to amortise the hand-off,
#: small enough that the workers start early and finish soon after the replay).
CHUNK_BLOCKS = 100

Progress = Callable[[int, int], None]
#: What a signature signs is ``DOMAIN || 0x00 || digest`` (PROTOCOL.md §2).
_VOTE_PREFIX = signing_message(Domain.VOTE, "")
_TX_PREFIX = signing_message(Domain.TX, "")
#: One check for a worker: (public key, message, signature) or (None, blob hash, size or None).
_Job = tuple[bytes, bytes, bytes] | tuple[None, str, int | None]
#: A worker's answer: signatures checked, blobs checked, and the first failing job if any
#: (its index in the batch, the blob status, the size found).
_BatchResult = tuple[int, int, tuple[int, BlobStatus | None, int] | None]


def verify_chain(
    ledger: Ledger,
    *,
    deep: bool = False,
    checks: AppChecks | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
) -> Report:
    """Verify the whole stored chain; the report's ``fault`` is the first broken rule, if any.

    ``deep`` re-runs the FL contract and aggregation through ``checks`` (required when deep).
    ``workers``: processes for signatures (default: all cores; 1 verifies in-process).
    """
    if deep and checks is None:
        raise BcflError("deep verification needs the FL checks (AppChecks)")
    started = time.perf_counter()
    report = Report(chain_id=ledger.genesis_hash, deep=deep)
    try:
        report.stored_height = ledger.height
        _verify(ledger, report, checks if deep else None, workers, progress)
    except VerificationError as exc:
        report.fault = Fault.from_error(exc)
    report.elapsed_s = time.perf_counter() - started
    return report


def _verify(
    ledger: Ledger,
    report: Report,
    checks: AppChecks | None,
    workers: int | None,
    progress: Progress | None,
) -> None:
    top = report.stored_height
    genesis = next(steps.read_blocks(ledger, 0, 0))
    state = steps.verify_genesis(ledger, genesis)
    report.height, report.head, report.blocks, report.blobs = 0, genesis.hash, 1, 2
    if top == 0:
        return
    n_workers = workers if workers is not None else (os.cpu_count() or 1)
    if n_workers <= 1 or top < PARALLEL_MIN_BLOCKS:
        _Replay(ledger, report, checks, progress).run(state, top)
        return
    with ProcessPoolExecutor(n_workers, mp_context=_mp_context()) as pool:
        offload = _Offload(pool, ledger.genesis_hash, str(ledger.blobs.root))
        replay = _Replay(ledger, report, checks, progress, offload=offload)
        rule_fault: VerificationError | None = None
        try:
            replay.run(state, top)
        except VerificationError as exc:
            rule_fault = exc
        offload.flush()
        worker_fault = offload.first_fault()
        report.signatures += offload.signatures
        report.blobs += offload.blobs
    if worker_fault is None:
        if rule_fault is not None:
            raise rule_fault
        return
    fault, after_rules = worker_fault
    height = fault.height
    assert height is not None
    if rule_fault is not None and rule_fault.height is not None:
        if rule_fault.height < height or (rule_fault.height == height and after_rules):
            raise rule_fault
        if rule_fault.height == height:
            _reexamine(ledger, replay.before, rule_fault, checks)
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
    """Signature and blob checks of the replayed blocks, in batches, on the process pool."""

    def __init__(self, pool: ProcessPoolExecutor, chain_id: str, blob_root: str) -> None:
        self.pool = pool
        self.chain_id = chain_id
        self.blob_root = blob_root
        self.jobs: list[_Job] = []
        self.infos: list[_JobInfo] = []
        self.blocks = 0
        self.batches: list[tuple[Future[_BatchResult], list[_JobInfo]]] = []
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
            jobs.append((None, blob, size))
            infos.append((h, tx_hash, what, blob, size))
        self.blocks += 1
        if self.blocks >= CHUNK_BLOCKS:
            self.flush()

    def flush(self) -> None:
        if self.jobs:
            future = self.pool.submit(_check_batch, self.blob_root, self.jobs)
            self.batches.append((future, self.infos))
        self.jobs, self.infos, self.blocks = [], [], 0

    def first_fault(self) -> tuple[VerificationError, bool] | None:
        """The first failing check in chain order, and whether it comes after the rules (a
        blob) rather than with them (a signature); counts what the workers checked."""
        found: tuple[VerificationError, bool] | None = None
        for future, infos in self.batches:  # in height order: the first fault is the lowest
            signatures, blobs, failed = future.result()
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
        report: Report,
        checks: AppChecks | None,
        progress: Progress | None,
        *,
        offload: _Offload | None = None,
    ) -> None:
        self.ledger = ledger
        self.report = report
        self.checks = checks
        self.progress = progress
        self.offload = offload
        self.before: ChainState | None = None  # the state under the block being applied

    def run(self, state: ChainState, end: int) -> ChainState:
        report = self.report
        offload = self.offload
        for block in steps.read_blocks(self.ledger, state.height + 1, end):
            self.before = state
            if offload is not None:
                offload.add(block)  # before the rules: a rule fault here still needs them
            state = steps.apply_block(
                state, block, checks=self.checks, signatures_verified=offload is not None
            )
            if offload is None:
                report.signatures += steps.count_signatures(block)
                report.blobs += steps.verify_block_blobs(self.ledger.blobs, block)
            report.height, report.head = block.height, state.head_hash
            report.blocks += 1
            report.txs += len(block.txs)
            for tx in block.txs:
                report.tx_kinds[str(tx.kind)] = report.tx_kinds.get(str(tx.kind), 0) + 1
            if self.progress is not None:
                self.progress(block.height, report.stored_height)
        return state


def _mp_context() -> multiprocessing.context.BaseContext:
    """fork where the platform has it: workers start in milliseconds, not seconds of imports.

    Workers only check signatures and hash blob files; they touch no database.
    """
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


_worker_blobs: dict[str, BlobStore] = {}


def _check_batch(blob_root: str, jobs: list[_Job]) -> _BatchResult:
    """Worker: the checks in order; stops at the first that fails."""
    blobs = _worker_blobs.get(blob_root)
    if blobs is None:
        blobs = _worker_blobs[blob_root] = BlobStore(Path(blob_root))
    signatures = checked_blobs = 0
    for index, (key, first, second) in enumerate(jobs):
        if key is None:
            assert isinstance(first, str) and not isinstance(second, bytes)
            status, size = blobs.check(first)
            if status != "ok" or (second is not None and size != second):
                return signatures, checked_blobs, (index, status, size)
            checked_blobs += 1
        else:
            assert isinstance(first, bytes) and isinstance(second, bytes)
            if not verify_message(key, first, second):
                return signatures, checked_blobs, (index, None, 0)
            signatures += 1
    return signatures, checked_blobs, None
