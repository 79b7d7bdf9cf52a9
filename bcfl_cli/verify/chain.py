"""``verify_chain``: re-derive everything from the genesis, trusting nothing in the store.

Signatures dominate the cost (Ed25519 verification is ~14k/s per core), so for long chains a
process pool verifies them over block ranges, each signature once, while this process replays
the rules with signature checks switched off; the first fault is then the lowest height where
either found one, re-examined with signatures on so that the order inside a block is the
protocol's.
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
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import steps
from bcfl_cli.verify.report import Fault, Report

#: Below this many blocks a process pool costs more (start-up) than it saves.
PARALLEL_MIN_BLOCKS = 400
#: Blocks per task handed to a worker (small enough to balance, large enough to amortise).
CHUNK_BLOCKS = 250

Progress = Callable[[int, int], None]
_SigResult = tuple[int, tuple[int | None, str | None, str, str] | None]


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
        _Replay(ledger, report, checks, progress, pooled=False).run(state, top)
        return
    with ProcessPoolExecutor(n_workers, mp_context=_mp_context()) as pool:
        futures = [
            pool.submit(
                _signature_range,
                ledger.url,
                str(ledger.blobs.root),
                ledger.genesis_hash,
                low,
                min(top, low + CHUNK_BLOCKS - 1),
            )
            for low in range(1, top + 1, CHUNK_BLOCKS)
        ]
        replay = _Replay(ledger, report, checks, progress, pooled=True)
        rule_fault: VerificationError | None = None
        try:
            replay.run(state, top)
        except VerificationError as exc:
            rule_fault = exc
        sig_fault = _first_signature_fault(futures)
        report.signatures += sum(f.result()[0] for f in futures)
    if sig_fault is None or sig_fault.height is None:
        if rule_fault is not None:
            raise rule_fault
        return
    if rule_fault is not None and rule_fault.height is not None:
        if rule_fault.height < sig_fault.height:
            raise rule_fault
        if rule_fault.height == sig_fault.height:
            _reexamine(ledger, replay.before, rule_fault, checks)
    # the signature fault comes first: only the blocks below it verified
    report.height = sig_fault.height - 1
    report.head = ledger.block(report.height).hash
    report.blocks = sig_fault.height
    raise sig_fault.to_error()


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


def _first_signature_fault(futures: list[Future[_SigResult]]) -> Fault | None:
    for future in futures:  # in height order: the first fault found is the lowest
        _, fault = future.result()
        if fault is not None:
            return Fault(*fault)
    return None


class _Replay:
    """Rules block by block (signatures too unless ``pooled``), counting into the report."""

    def __init__(
        self,
        ledger: Ledger,
        report: Report,
        checks: AppChecks | None,
        progress: Progress | None,
        *,
        pooled: bool,
    ) -> None:
        self.ledger = ledger
        self.report = report
        self.checks = checks
        self.progress = progress
        self.pooled = pooled
        self.before: ChainState | None = None  # the state under the block being applied

    def run(self, state: ChainState, end: int) -> ChainState:
        report = self.report
        for block in steps.read_blocks(self.ledger, state.height + 1, end):
            self.before = state
            state = steps.apply_block(
                state, block, checks=self.checks, signatures_verified=self.pooled
            )
            if not self.pooled:
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

    Workers only read SQLite and check signatures; they open their own connections.
    """
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


_worker_ledgers: dict[str, Ledger] = {}


def _worker_ledger(url: str, blob_dir: str) -> Ledger:
    ledger = _worker_ledgers.get(url)
    if ledger is None:
        ledger = Ledger.open_url(url, Path(blob_dir), upgrade=False)
        _worker_ledgers[url] = ledger
    return ledger


def _signature_range(url: str, blob_dir: str, chain_id: str, start: int, end: int) -> _SigResult:
    """Worker: every signature of blocks ``start..end``; the first invalid one, if any."""
    checked = 0
    ledger = _worker_ledger(url, blob_dir)
    try:
        for block in steps.read_blocks(ledger, start, end):
            fault = steps.block_signature_fault(chain_id, block)
            if fault is not None:
                return checked, (fault.height, fault.tx_hash, fault.code, fault.message)
            checked += steps.count_signatures(block)
    except VerificationError as exc:
        return checked, (exc.height, exc.tx_hash, exc.code, exc.message)
    return checked, None
