"""verify-chain on a long, realistic chain vs the raw Ed25519 verify rate on all cores.

Usage::

    .venv/bin/python bench/verify_chain.py [--blocks 10000] [--workers N] [--repeat 3]
                                           [--no-deep] [--no-cli] [--json]

The chain (built once in-process and cached under bench/results/) has 7 validators that also
train, and repeats a six-block round: ``open_round``; three blocks of ``update`` + ``validation``
pairs (7 updates, each a real safetensors delta of a 650-parameter logistic regression, stored in
the blob store); the ``aggregate`` (computed by ``bcfl_cli.fl.aggregation``, so ``--deep``
recomputes it bit for bit); and an empty block. Every block carries a commit certificate signed
by all 7 validators. About 9.7 signatures a block.

The baseline is the physical limit: PyNaCl verifying the same number of signatures (the same
message shape: domain prefix + 32-byte digest) with one process per core, on a warm pool. The
ratio says how close verify-chain (which also reads SQLite, parses canonical JSON, hashes every
transaction and blob, and replays the rules) comes to it. Every arm runs ``--repeat`` times,
alternating, and is reported by its medians, in wall seconds and in CPU seconds (the process
and its workers): on a shared machine the wall ratio depends on how many runnable processes
each arm has, the CPU ratio ("x raw CPU", against the one-process raw arm) does not.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import nacl.signing  # noqa: E402
import torch  # noqa: E402

from bcfl_cli.chain import ChainState, build_block, commit_with_keys  # noqa: E402
from bcfl_cli.consortium.config import ConsortiumConfig, MemberSpec  # noqa: E402
from bcfl_cli.consortium.genesis import make_genesis  # noqa: E402
from bcfl_cli.fl.aggregation import UpdateInput, aggregate  # noqa: E402
from bcfl_cli.fl.checks import FLChecks  # noqa: E402
from bcfl_cli.fl.models import initial_state, state_bytes  # noqa: E402
from bcfl_cli.home import Home  # noqa: E402
from bcfl_cli.protocol.block import Block  # noqa: E402
from bcfl_cli.protocol.crypto import Domain, did_from_public_key, signing_message  # noqa: E402
from bcfl_cli.protocol.spec import (  # noqa: E402
    AggregationSpec,
    ContractRules,
    ModelSpec,
    TrainingPlan,
)
from bcfl_cli.protocol.tx import Transaction, TxKind, make_tx  # noqa: E402
from bcfl_cli.store.ledger import Ledger  # noqa: E402
from bcfl_cli.verify import verify_chain  # noqa: E402
from bcfl_cli.verify.report import Report as VerifyReport  # noqa: E402
from bench.common import RESULTS, Report, base_parser, emit, log, ratio  # noqa: E402

#: Bump when the chain's shape changes, so a stale cache is rebuilt.
CHAIN_VERSION = 1
VALIDATORS = 7
GENESIS_TIME = 1_760_000_000_000
SPEC = ModelSpec(architecture="logreg", input_shape=[64], num_classes=10, seed=0)
#: Blocks of a round: which updates each update block carries (7 updates over 3 blocks).
UPDATE_BLOCKS = ((0, 1, 2), (3, 4), (5, 6))
#: Blocks appended per database transaction while building.
APPEND_BATCH = 500


def key_for(i: int) -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey(hashlib.sha256(f"bcfl-bench-validator-{i}".encode()).digest())


@dataclass
class Built:
    ledger: Ledger
    seconds: float  # building (0 when read from the cache)
    cached: bool


class ChainBuilder:
    """Commits blocks in-process exactly as the consensus engine's outcome would look."""

    def __init__(self, home: Home) -> None:
        self.keys = [key_for(i) for i in range(VALIDATORS)]
        self.dids = [did_from_public_key(bytes(k.verify_key)) for k in self.keys]
        config = ConsortiumConfig(
            name="Bench Consortium",
            admission_approvals=2,
            removal_approvals=2,
            members=[
                MemberSpec(name=f"m{i}", did=d, roles=["trainer", "validator"], power=1)
                for i, d in enumerate(self.dids)
            ],
            model=SPEC,
            training=TrainingPlan(rounds=100_000, min_updates=VALIDATORS, deadline_blocks=10),
            contract=ContractRules(),
            aggregation=AggregationSpec(rule="fedavg"),
        )
        self.model = initial_state(SPEC)
        weights = state_bytes(self.model)
        home.ensure()
        from bcfl_cli.store.blobs import BlobStore

        initial = BlobStore(home.blob_dir).put(weights)
        self.document = config.to_document(initial)
        self.genesis = make_genesis(self.document, time_ms=GENESIS_TIME)
        self.ledger = Ledger.create(home, self.genesis, self.document)
        self.state = ChainState.from_genesis(self.genesis, self.document)
        self.clock = GENESIS_TIME
        self.gen = torch.Generator().manual_seed(1)
        self.head = self.genesis
        self.pending: list[Block] = []

    @property
    def chain(self) -> str:
        return self.genesis.hash

    def tx(self, i: int, kind: TxKind, body: dict[str, Any]) -> Transaction:
        self.clock += 1
        nonce = hashlib.sha256(f"{self.clock}/{i}".encode()).hexdigest()[:32]
        return make_tx(self.keys[i], self.chain, kind, body, time_ms=self.clock, nonce=nonce)

    def commit(self, txs: Sequence[Transaction]) -> None:
        height = self.state.height + 1
        proposer = height % VALIDATORS
        self.clock += 1000
        block = build_block(self.state, self.head, txs, self.keys[proposer], time_ms=self.clock)
        block = commit_with_keys(block, self.keys, self.chain)
        self.state = self.state.apply(block, verify_signatures=False)
        self.head = block
        self.pending.append(block)
        if len(self.pending) >= APPEND_BATCH:
            self.flush()

    def flush(self) -> None:
        """Append the pending blocks in one database transaction (one fsync, not one a block);
        they were checked by ``ChainState.apply`` above and verify-chain checks them all again."""
        self.ledger.append_many(self.pending)
        self.pending.clear()

    def proposer(self) -> int:
        return (self.state.height + 1) % VALIDATORS

    def add_round(self, limit: int) -> None:
        """One round (six blocks), cut short at height ``limit``."""
        rnd = self.state.round
        number = rnd.number + 1
        base = rnd.model
        deadline = self.state.height + 1 + self.state.config.training.deadline_blocks
        self.commit(
            [
                self.tx(
                    self.proposer(),
                    TxKind.OPEN_ROUND,
                    {"round": number, "base_model": base, "deadline_height": deadline},
                )
            ]
        )
        accepted: list[UpdateInput] = []
        for members in UPDATE_BLOCKS:
            if self.state.height >= limit:
                return
            txs: list[Transaction] = []
            for i in members:
                delta = {
                    k: (torch.randn(v.shape, generator=self.gen) * 0.01).contiguous()
                    for k, v in self.model.items()
                }
                data = state_bytes(delta)
                blob = self.ledger.blobs.put(data)
                update = self.tx(
                    i,
                    TxKind.UPDATE,
                    {
                        "round": number,
                        "base_model": base,
                        "blob": blob,
                        "blob_size": len(data),
                        "num_samples": 100 + 10 * i,
                        "metrics": {"steps": "4", "train_loss": "0.512000"},
                    },
                )
                verdict = {"update": update.hash, "verdict": "accept", "reason": "ok", "detail": ""}
                txs += [update, self.tx(self.proposer(), TxKind.VALIDATION, verdict)]
                accepted.append(UpdateInput(update.hash, delta, 100 + 10 * i))
            self.commit(txs)
        if self.state.height >= limit:
            return
        result = aggregate(self.state.config.aggregation, self.model, accepted)
        model = result.model_bytes
        self.ledger.blobs.put(model)
        self.model = result.new_state
        body = {
            "round": number,
            "updates": sorted(u.hash for u in accepted),
            "rule": result.rule,
            "params": self.state.config.aggregation_params,
            "model": result.model_hash,
            "model_size": len(model),
        }
        self.commit([self.tx(self.proposer(), TxKind.AGGREGATE, body)])
        if self.state.height < limit:
            self.commit([])


def chain_home(blocks: int) -> Path:
    return RESULTS / f"chain-v{CHAIN_VERSION}-{blocks}"


def build_chain(blocks: int, *, rebuild: bool = False, quiet: bool = False) -> Built:
    """The cached chain of ``blocks`` blocks, built (and timed) if missing or stale."""
    root = chain_home(blocks)
    done = root / "DONE"
    if done.exists() and not rebuild:
        ledger = Ledger.open(Home.resolve(root))
        if ledger.height == blocks:
            return Built(ledger, 0.0, True)
        ledger.close()
    shutil.rmtree(root, ignore_errors=True)
    log(f"building a {blocks}-block chain under {root} ...", quiet=quiet)
    start = time.perf_counter()
    # Test data, not a member's store: skip the per-blob fsync and sync once at the end.
    with mock.patch.object(os, "fsync", lambda fd: None):
        builder = ChainBuilder(Home.resolve(root))
        while builder.state.height < blocks:
            builder.add_round(blocks)
            if builder.state.height % 1200 == 0:
                log(f"  height {builder.state.height}", quiet=quiet)
        builder.flush()
    os.sync()
    seconds = time.perf_counter() - start
    done.write_text(f"{seconds:.3f}\n")
    return Built(builder.ledger, seconds, False)


# --- the raw limit -------------------------------------------------------------------------------
_SAMPLES = 512


def _samples() -> list[tuple[bytes, bytes, bytes]]:
    """(public key, message, signature) triples shaped like the chain's signatures."""
    out = []
    for i in range(_SAMPLES):
        key = key_for(i % VALIDATORS)
        digest = hashlib.sha256(i.to_bytes(4, "big")).hexdigest()
        message = signing_message(Domain.VOTE if i % 2 else Domain.TX, digest)
        out.append((bytes(key.verify_key), message, key.sign(message).signature))
    return out


def _verify_many(count: int) -> int:
    samples = _samples()
    keys = [nacl.signing.VerifyKey(pk) for pk, _, _ in samples]
    start = time.perf_counter_ns()
    for n in range(count):
        j = n % _SAMPLES
        keys[j].verify(samples[j][1], samples[j][2])
    return time.perf_counter_ns() - start


def raw_verify_seconds(signatures: int, processes: int) -> float:
    """Wall time for ``processes`` warm workers to verify ``signatures`` between them."""
    if processes <= 1:
        return _verify_many(signatures) / 1e9
    ctx = multiprocessing.get_context("fork")
    share = [
        signatures // processes + (1 if i < signatures % processes else 0) for i in range(processes)
    ]
    with ctx.Pool(processes) as pool:
        pool.map(_verify_many, [200] * processes)  # warm: workers forked and imports done
        start = time.perf_counter()
        pool.map(_verify_many, share)
        return time.perf_counter() - start


# --- the bench -----------------------------------------------------------------------------------
def cpu_seconds() -> float:
    """CPU time of this process and of its waited-for children (user + system).

    On a machine shared with other work the wall time of an arm depends on how many runnable
    processes it has (verify-chain runs a replay beside its N workers, the raw arm N workers):
    the CPU time it needs does not, so the bench reports both.
    """
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


@dataclass
class Sample:
    """One timed run of one arm: wall seconds, CPU seconds (own and children's)."""

    wall: float
    cpu: float


def timed(fn: Callable[[], object]) -> tuple[Sample, object]:
    cpu, start = cpu_seconds(), time.perf_counter()
    result = fn()
    return Sample(time.perf_counter() - start, cpu_seconds() - cpu), result


def cli_run(blocks: int) -> None:
    """The real command, process start and imports included."""
    from bcfl_cli.demo.launcher import bcfl_command

    proc = subprocess.run(
        [*bcfl_command(), "verify-chain", "--home", str(chain_home(blocks)), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"bcfl verify-chain failed (exit {proc.returncode}): {proc.stdout}")


def _checked(report: VerifyReport, what: str) -> VerifyReport:
    if not report.ok:
        raise SystemExit(f"{what} failed on the bench chain: {report.fault}")
    return report


def run(
    blocks: int,
    *,
    workers: int,
    deep: bool,
    cli: bool = True,
    repeat: int = 1,
    quiet: bool = False,
) -> Report:
    """Every arm ``repeat`` times, alternating (raw, bcfl, raw, bcfl, ...), medians reported."""
    cores = os.cpu_count() or 1
    report = Report(
        bench="verify_chain",
        title=f"verify-chain on {blocks:,} blocks vs raw PyNaCl verify",
        settings={
            "blocks": blocks,
            "workers": workers,
            "validators": VALIDATORS,
            "deep": deep,
            "repeat": repeat,
        },
        columns=[
            "what",
            "blocks",
            "signatures",
            "seconds",
            "sigs/s",
            "x raw limit",
            "CPU s",
            "x raw CPU",
        ],
    )
    built = build_chain(blocks, quiet=quiet)
    ledger = built.ledger
    try:
        log("verify-chain (a first pass, to check the cached chain) ...", quiet=quiet)
        shallow = verify_chain(ledger, workers=workers)
        if not shallow.ok and built.cached:
            ledger.close()
            log("cached chain no longer verifies: rebuilding it", quiet=quiet)
            built = build_chain(blocks, rebuild=True, quiet=quiet)
            ledger = built.ledger
            shallow = verify_chain(ledger, workers=workers)
        _checked(shallow, "verify-chain")
        sigs = shallow.signatures
        arms: dict[str, Callable[[], object]] = {
            "raw PyNaCl verify, 1 process": lambda: raw_verify_seconds(sigs, 1),
            f"raw PyNaCl verify, {workers} processes": lambda: raw_verify_seconds(sigs, workers),
            "bcfl verify-chain": lambda: _checked(
                verify_chain(ledger, workers=workers), "verify-chain"
            ),
        }
        if deep:
            arms["bcfl verify-chain --deep"] = lambda: _checked(
                verify_chain(
                    ledger,
                    workers=workers,
                    deep=True,
                    checks=FLChecks(ledger.blobs, keep_models=False),  # as the CLI's --deep
                ),
                "verify-chain --deep",
            )
        if cli:
            arms["bcfl verify-chain (CLI, whole process)"] = lambda: cli_run(blocks)
        samples: dict[str, list[Sample]] = {what: [] for what in arms}
        loads: list[float] = []
        for n in range(repeat):
            for what, fn in arms.items():
                log(f"[{n + 1}/{repeat}] {what} ...", quiet=quiet)
                loads.append(os.getloadavg()[0])
                sample, result = timed(fn)
                if isinstance(result, float):  # a raw arm times its warm pool itself
                    sample = Sample(result, sample.cpu)
                samples[what].append(sample)
        wall = {w: statistics.median(s.wall for s in v) for w, v in samples.items()}
        cpu = {w: statistics.median(s.cpu for s in v) for w, v in samples.items()}
        raw_names = list(arms)[:2]
        # the limit is the faster raw row: on a loaded machine N processes may not get N cores
        limit_rate = sigs / min(wall[w] for w in raw_names)
        raw_cpu = cpu[raw_names[0]]  # one process: signatures and nothing else
        for what in arms:
            rate = sigs / wall[what]
            counted = shallow if what.startswith("bcfl") else None
            report.add(
                what=what,
                blocks=counted.blocks if counted else None,
                signatures=sigs,
                seconds=wall[what],
                **{
                    "sigs/s": rate,
                    "x raw limit": ratio(rate, limit_rate),
                    "CPU s": cpu[what],
                    "x raw CPU": ratio(raw_cpu, cpu[what]),
                },
            )
        report.notes += [
            f"{shallow.txs:,} transactions ({shallow.tx_kinds}), {shallow.blobs:,} blobs hashed",
            "x raw limit = signature rate / the faster raw PyNaCl row (1 process, or "
            f"{workers} warm processes on {cores} cores): 1.0 is the physical limit",
            "CPU s = CPU seconds of the process and its workers (user + system; a raw pool's "
            "includes its 200-signature warm-up per worker); x raw CPU = the 1-process raw "
            "row's CPU / the row's: the share of the work that is signature checks, whatever "
            "the load",
            f"medians of {repeat} alternating runs; 1-minute load at each start: "
            + ", ".join(f"{x:.1f}" for x in loads),
            (
                f"chain read from the cache ({chain_home(blocks).name})"
                if built.cached
                else f"chain built in {built.seconds:.1f} s (sign, apply, append, blobs)"
            ),
        ]
        report.settings["build_seconds"] = built.seconds
        report.settings["samples"] = {
            w: [[round(s.wall, 3), round(s.cpu, 3)] for s in v] for w, v in samples.items()
        }
    finally:
        ledger.close()
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--blocks", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--no-deep", action="store_true", help="skip verify-chain --deep")
    parser.add_argument("--no-cli", action="store_true", help="skip timing the CLI process")
    parser.add_argument(
        "--repeat", type=int, default=3, help="alternating runs of every arm (medians reported)"
    )
    args = parser.parse_args(argv)
    blocks = min(args.blocks, 2_000) if args.quick else args.blocks
    report = run(
        blocks,
        workers=args.workers,
        deep=not args.no_deep,
        cli=not args.no_cli,
        repeat=max(1, args.repeat),
        quiet=args.json,
    )
    emit(report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
