"""Large models: memory, round time and bytes of real node rounds at 1M to 110M parameters.

Usage::

    .venv/bin/python bench/large_model.py [--params 1M 10M 25M] [--members 4] [--validators 1]
        [--rounds 1] [--round-bound 600] [--memory-bound-mb 12288] [--min-free-mb 4096]
        [--wide 25M:10] [--no-verify] [--json]

For each size, N real ``bcfl node`` processes (default 4) run ``--rounds`` rounds of an MLP
64 -> W -> W -> 10, W chosen so that the model has the asked parameter count. ``--validators``
of them only validate (no ``--train``); the others train and validate, and the genesis waits
for all their updates (``min_updates`` = trainers). Every node checks every update against the
contract and recomputes the aggregate.

What each row reports:

- **update MB**: the update blob as it travels (safetensors, float32).
- **memory**: every node's resident memory is sampled every 0.1 s from /proc/PID/status. Its
  idle baseline is the median over 3 s after start-up, before any training: all nodes start
  without ``--train``, are sampled, then the trainers are restarted with ``--train``. The peak
  above idle is given as a multiple of the update size, apart for nodes that only validate and
  nodes that also train (issue 19's goals: at most 2x and 5x).
- **round s against its floor**, measured in the same run, in this process: one member's
  local training of that model on its partition (the largest one, one torch thread) + a raw
  loopback transfer of the bytes a validator must fetch (uvicorn + httpx streaming, as
  ``bench/sync_bench.py``'s raw arm) + sha256 of those bytes + one exact ``aggregate()`` pass
  over the round's updates, each part the fastest of ``--floor-repeats`` measurements (3: a
  baseline at its best). Round 1 is timed from the first ``round 1: training`` log line to
  its aggregate's commit on the first node, later rounds from commit to commit.
- **bytes per member per round**: what each node's blob store gained, split into the updates
  it fetched from peers (every update but its own) and what it wrote itself; the minimum a
  member needs is one update up and one model down.
- **verify-chain --deep** on every node's store after the run (pass count).

Every run is bounded: ``--round-bound`` seconds per round, and the run is stopped (row marked
FAILED, the peaks seen so far kept) once the nodes together hold more than
``--memory-bound-mb`` or the machine has less than ``--min-free-mb`` available, so that a
shared machine is never exhausted. A last row plans 1B parameters on paper from the slopes
measured at the largest sizes that passed.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import itertools
import json
import math
import os
import re
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bcfl_cli.fl.allocator import prefer_huge_pages  # noqa: E402

# Before torch loads: the floor's training runs in this process and must be measured at its
# best, as a `bcfl` node trains (its entry point asks torch for huge pages: fl/allocator.py).
prefer_huge_pages()

import httpx  # noqa: E402

from bcfl_cli.demo.launcher import LocalConsortium, Member  # noqa: E402
from bcfl_cli.fl.aggregation import UpdateInput, aggregate  # noqa: E402
from bcfl_cli.fl.models import initial_state  # noqa: E402
from bcfl_cli.fl.tensors import encode_tensors  # noqa: E402
from bcfl_cli.fl.training import train_local  # noqa: E402
from bcfl_cli.protocol.spec import ModelSpec  # noqa: E402
from bench.common import (  # noqa: E402
    FEATURES,
    FEDAVG,
    GENESIS_TIME_MS,
    PASSPHRASE,
    PLAN,
    MemoryBoundExceeded,
    Report,
    RoundTimeout,
    base_parser,
    emit,
    first_training_from_logs,
    genesis_plan,
    load_members,
    log,
    member_plans,
    partition_files,
    rounds_from_log,
    torch_threads,
)
from bench.sync_bench import RawServer  # noqa: E402

MiB = 2**20
MB = 1e6
SAMPLE_S = 0.1
IDLE_S = 3.0
STARTUP_S = 300.0
VERIFY_TIMEOUT_S = 900.0
SUFFIXES = {"K": 10**3, "M": 10**6, "B": 10**9}


# --- sizes ----------------------------------------------------------------------------------------
def parse_params(text: str) -> int:
    """``25M`` -> 25,000,000 (K, M, B suffixes; a plain integer as it is)."""
    text = text.strip().upper()
    if text and text[-1] in SUFFIXES:
        return int(float(text[:-1]) * SUFFIXES[text[-1]])
    return int(text)


def label(params: int) -> str:
    for suffix, scale in (("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if params >= scale:
            return f"{params / scale:g}{suffix}"
    return str(params)


def width_for(params: int) -> int:
    """W such that the MLP 64 -> W -> W -> 10 has about ``params`` parameters.

    Its count is W^2 + (64 + 1 + 1 + 10) W + 10 (two square-ish layers dominate).
    """
    b = FEATURES + 12
    return max(1, round((-b + math.sqrt(b * b + 4 * (params - 10))) / 2))


def mlp_parameters(width: int) -> int:
    """The parameter count of ``mlp(width)``, without building it (1B would take 4 GB)."""
    return width * width + (FEATURES + 12) * width + 10


def mlp(width: int) -> ModelSpec:
    return ModelSpec(
        architecture="mlp", input_shape=[FEATURES], num_classes=10, hidden=[width, width], seed=0
    )


# --- memory ---------------------------------------------------------------------------------------
def proc_status_kib(pid: int, key: str) -> int:
    """A ``kB`` field of /proc/PID/status (VmRSS, VmHWM) in bytes; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def proc_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) ``pid`` has used so far; 0 once the process is gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mem_available() -> int:
    """MemAvailable of this machine in bytes (a very large number where /proc says nothing)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62


class RssSampler:
    """Samples every node's VmRSS every ``SAMPLE_S`` seconds on a thread.

    Keeps each node's peak (by name: a restarted node keeps its entry) and trips ``exceeded``
    once the nodes together hold more than ``total_bound`` or the machine's available memory
    falls under ``min_free``; the watcher then stops the run.
    """

    def __init__(self, consortium: LocalConsortium, *, total_bound: int, min_free: int) -> None:
        self.consortium = consortium
        self.total_bound = total_bound
        self.min_free = min_free
        self.peak: dict[str, int] = {}
        self.samples: dict[str, list[int]] = {}
        self.exceeded: str | None = None
        self._recording = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def record(self, on: bool) -> None:
        """Keep every sample (the idle window) or only the peaks."""
        if on:
            self.samples = {}
        self._recording = on

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            current = {
                m.name: proc_status_kib(m.proc.pid, "VmRSS")
                for m in self.consortium.members.values()
                if m.proc is not None and m.running
            }
            for name, rss in current.items():
                self.peak[name] = max(self.peak.get(name, 0), rss)
                if self._recording:
                    self.samples.setdefault(name, []).append(rss)
            total, free = sum(current.values()), mem_available()
            if self.exceeded is None and total > self.total_bound:
                self.exceeded = (
                    f"nodes hold {total / MiB:,.0f} MiB, over the bound of "
                    f"{self.total_bound / MiB:,.0f} MiB"
                )
            elif self.exceeded is None and free < self.min_free:
                self.exceeded = (
                    f"the machine has {free / MiB:,.0f} MiB available, under the reserve of "
                    f"{self.min_free / MiB:,.0f} MiB"
                )

    def reset_peaks(self) -> None:
        self.peak = {}


# --- the floor ------------------------------------------------------------------------------------
@dataclass
class Floor:
    """What a round cannot go below on this machine, part by part (seconds)."""

    train_s: float
    transfer_s: float
    sha256_s: float
    aggregate_s: float
    update_bytes: int

    @property
    def total_s(self) -> float:
        return self.train_s + self.transfer_s + self.sha256_s + self.aggregate_s

    @classmethod
    def best(cls, floors: Sequence[Floor]) -> Floor:
        """Each part at its fastest over ``floors``: a baseline at its best, so that a slow
        measurement of it (the one-thread training moved 9.0-13.5 s at 110M between quiet
        runs) cannot flatter the rounds' ratio."""
        if not floors:
            raise ValueError("no floor measured")
        sizes = {f.update_bytes for f in floors}
        if len(sizes) != 1:
            raise ValueError(f"floors of different update sizes: {sorted(sizes)}")
        return cls(
            min(f.train_s for f in floors),
            min(f.transfer_s for f in floors),
            min(f.sha256_s for f in floors),
            min(f.aggregate_s for f in floors),
            floors[0].update_bytes,
        )


#: How many times the floor is measured a row; its parts are taken at their fastest.
FLOOR_REPEATS = 3


def measure_floor(
    spec: ModelSpec, trainers: int, members: int, repeats: int | None = None
) -> Floor:
    """The floor of one round with ``trainers`` updates, at its best of ``repeats``
    (``--floor-repeats``, default ``FLOOR_REPEATS``)."""
    repeats = FLOOR_REPEATS if repeats is None else repeats
    if repeats < 1:
        raise ValueError("the floor needs at least one measurement")
    return Floor.best([measure_floor_once(spec, trainers, members) for _ in range(repeats)])


def measure_floor_once(spec: ModelSpec, trainers: int, members: int) -> Floor:
    """The floor of one round with ``trainers`` updates, measured now, in this process."""
    datasets = load_members(members)
    data = max(datasets[:trainers], key=lambda d: len(d.labels))
    with torch_threads(1):
        state = initial_state(spec)
        start = time.perf_counter()
        result = train_local(spec, PLAN, state, data, seed=1)
        train_s = time.perf_counter() - start
    blob = encode_tensors(result.delta)
    fetched = [blob] * trainers  # the same object: one copy in memory
    start = time.perf_counter()
    for payload in fetched:
        hashlib.sha256(payload).digest()
    sha_s = time.perf_counter() - start
    transfer_s = raw_transfer(fetched)
    updates = [
        UpdateInput(hashlib.sha256(f"u{i}".encode()).hexdigest(), result.delta, result.num_samples)
        for i in range(trainers)
    ]
    start = time.perf_counter()
    aggregate(FEDAVG, state, updates)
    aggregate_s = time.perf_counter() - start
    floor = Floor(train_s, transfer_s, sha_s, aggregate_s, len(blob))
    del state, result, blob, fetched, updates
    gc.collect()
    return floor


def raw_transfer(blobs: list[bytes]) -> float:
    """Seconds to stream ``blobs`` once over loopback from a bare uvicorn app with httpx."""
    with RawServer([], blobs) as server, httpx.Client(timeout=600.0) as client:
        base = f"http://127.0.0.1:{server.port}"
        start = time.perf_counter()
        got = 0
        for i in range(len(blobs)):
            with client.stream("GET", f"{base}/blobs/{i}") as response:
                for chunk in response.iter_bytes(1 << 20):
                    got += len(chunk)
        seconds = time.perf_counter() - start
    if got != sum(map(len, blobs)):
        raise RuntimeError(f"raw transfer got {got} bytes, expected {sum(map(len, blobs))}")
    return seconds


# --- the nodes ------------------------------------------------------------------------------------
#: ``--keep-logs``: where each run copies its nodes' logs (for a per-stage timeline), or None.
KEEP_LOGS: Path | None = None
#: The nodes make an empty block every idle second (``bcfl node --empty-blocks``, the pace of the
#: demo and the tests); ``--no-empty-blocks``: only blocks with content, ``bcfl node``'s default.
EMPTY_BLOCKS = True


class LargeConsortium(LocalConsortium):
    """``members`` founders (all validators), the first ``trainers`` of them training."""

    def __init__(
        self, root: Path, spec: ModelSpec, members: int, trainers: int, rounds: int
    ) -> None:
        params = mlp_parameters(spec.hidden[0])
        files = list(partition_files(members))
        plans = member_plans(members, 0, files)
        super().__init__(
            root,
            plans,
            genesis_plan(
                spec,
                PLAN,
                rounds=rounds,
                min_updates=trainers,
                deadline_blocks=1000,
                max_blob_bytes=max(256 * MiB, 8 * params + MiB),
            ),
            passphrase=PASSPHRASE,
            genesis_time_ms=GENESIS_TIME_MS,
            empty_block_interval=None,
            empty_blocks=EMPTY_BLOCKS,
            timeout_propose_ms=None,
            log_json=False,
            env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        )
        self.nodes: list[Member] = [self.members[p.name] for p in plans]
        self.trainers = self.nodes[:trainers]
        self.validators = self.nodes[trainers:]

    def node_log(self, node: Member) -> Path:
        return node.home.node_dir / "node.log"


def blob_bytes(member: Member) -> dict[str, int]:
    """Every blob in ``member``'s store with its size (hash -> bytes)."""
    out: dict[str, int] = {}
    for sub in member.home.blob_dir.iterdir():
        if sub.is_dir() and len(sub.name) == 2:
            for path in sub.iterdir():
                if path.is_file():
                    out[path.name] = path.stat().st_size
    return out


@dataclass
class NodeRun:
    """What one run of the nodes measured."""

    idle: dict[str, int] = field(default_factory=dict)
    peak: dict[str, int] = field(default_factory=dict)
    round_s: list[float] = field(default_factory=list)
    stored: dict[str, dict[str, int]] = field(default_factory=dict)
    updates: list[str] = field(default_factory=list)
    models: list[str] = field(default_factory=list)
    verified: dict[str, bool] = field(default_factory=dict)
    #: each node's blob bytes (sent, received) from ``/v1/status``'s ``traffic``, where shown
    traffic: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: each trainer's resident bytes as its node logged them once listening (after warm_up)
    ready: dict[str, int] = field(default_factory=dict)
    #: CPU seconds each node used per round after the first (start-up and warm-up left out)
    cpu_per_round: dict[str, float] = field(default_factory=dict)
    failure: str | None = None


def run_round(
    spec: ModelSpec,
    members: int,
    trainers: int,
    rounds: int,
    *,
    round_bound: float,
    total_bound: int,
    min_free: int,
    verify: bool,
    quiet: bool,
) -> tuple[LargeConsortium | None, NodeRun]:
    """Start the nodes, measure idle, train ``rounds`` rounds, measure, stop, verify."""
    root = Path(tempfile.mkdtemp(prefix="bcfl-bench-large-"))
    out = NodeRun()
    try:
        with LargeConsortium(root, spec, members, trainers, rounds) as consortium:
            with RssSampler(consortium, total_bound=total_bound, min_free=min_free) as sampler:
                try:
                    _drive(consortium, sampler, out, rounds, round_bound, quiet)
                except (RoundTimeout, MemoryBoundExceeded, RuntimeError, OSError) as exc:
                    out.failure = str(exc).splitlines()[0][:160]
                finally:
                    out.peak = dict(sampler.peak)
                    if out.failure is None:
                        out.stored = {n.name: blob_bytes(n) for n in consortium.nodes}
            consortium.close()
            if verify and out.failure is None:
                for node in consortium.nodes:
                    log(f"  verify-chain --deep on {node.name} ...", quiet=quiet)
                    done = consortium.run_cli(
                        "verify-chain",
                        "--deep",
                        "--json",
                        "--no-pin",
                        "--home",
                        str(node.home.root),
                        timeout=VERIFY_TIMEOUT_S,
                    )
                    out.verified[node.name] = done.returncode == 0
        return None, out
    finally:
        if KEEP_LOGS is not None:  # --keep-logs: the nodes' logs outlive the scratch folder
            keep = KEEP_LOGS / f"{mlp_parameters(spec.hidden[0])}x{members}"
            keep.mkdir(parents=True, exist_ok=True)
            for found in root.rglob("node.log"):
                shutil.copy(found, keep / f"{found.parent.parent.name}.log")
        shutil.rmtree(root, ignore_errors=True)


def _drive(
    consortium: LargeConsortium,
    sampler: RssSampler,
    out: NodeRun,
    rounds: int,
    round_bound: float,
    quiet: bool,
) -> None:
    # 1. every node up without --train: the idle baseline
    for node in consortium.nodes:
        consortium.start(node.name, train=False)
    for node in consortium.nodes:
        consortium.wait_ready(node.name, timeout=STARTUP_S)
    time.sleep(1.0)
    sampler.record(True)
    time.sleep(IDLE_S)
    sampler.record(False)
    out.idle = {
        name: int(statistics.median(values)) for name, values in sampler.samples.items() if values
    }
    log(
        "  idle MB: " + ", ".join(f"{n} {v / MB:.0f}" for n, v in sorted(out.idle.items())),
        quiet=quiet,
    )
    # 2. the trainers restart with --train; peaks count from here
    for node in consortium.trainers:
        consortium.stop(node.name)
    sampler.reset_peaks()
    for node in consortium.trainers:
        consortium.start(node.name, train=True)
    first = consortium.nodes[0]
    deadline = time.perf_counter() + STARTUP_S + round_bound * rounds
    closed = 0
    cpu_after_first: tuple[int, dict[str, float]] | None = None
    while closed < rounds:
        if sampler.exceeded is not None:
            raise MemoryBoundExceeded(sampler.exceeded)
        if time.perf_counter() > deadline:
            raise RoundTimeout(f"timed out: {closed} of {rounds} rounds closed")
        for node in consortium.nodes:
            consortium.check_alive(node.name)
        status = consortium.try_status(first.name)
        if status is not None:
            rnd = status["round"]
            done = rnd["number"] if rnd["state"] == "closed" else rnd["number"] - 1
            if done > closed:
                closed = done
                log(f"  round {closed} closed", quiet=quiet)
                if cpu_after_first is None:
                    cpu_after_first = (closed, _nodes_cpu(consortium))
        time.sleep(0.25)
    if cpu_after_first is not None and closed > cpu_after_first[0]:
        counted, before = closed - cpu_after_first[0], cpu_after_first[1]
        now = _nodes_cpu(consortium)
        out.cpu_per_round = {n: (now[n] - before[n]) / counted for n in now if n in before}
    time.sleep(2 * SAMPLE_S)
    found = rounds_from_log(consortium.node_log(first), rounds)
    trained = first_training_from_logs([consortium.node_log(n) for n in consortium.trainers])
    if found is None or trained is None:
        raise RuntimeError("the nodes' logs do not show every round")
    ends = found[1]
    for node in consortium.trainers:
        rss = listening_rss(consortium.node_log(node))
        if rss is not None:
            out.ready[node.name] = rss
    out.round_s = [ends[0] - trained] + [b - a for a, b in itertools.pairwise(ends)]
    out.updates, out.models = _round_blobs(consortium, rounds)
    for node in consortium.nodes:
        shown = (consortium.try_status(node.name) or {}).get("traffic")
        if isinstance(shown, dict):
            out.traffic[node.name] = (int(shown["sent"]), int(shown["received"]))


def _nodes_cpu(consortium: LargeConsortium) -> dict[str, float]:
    """Every running node's CPU seconds so far."""
    return {
        n.name: proc_cpu_s(n.proc.pid) for n in consortium.nodes if n.proc is not None and n.running
    }


def listening_rss(path: Path) -> int | None:
    """The resident bytes a node logged in its last ``listening`` line (``rss_mb=N``)."""
    found = None
    with contextlib.suppress(OSError):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            if "listening" in line and (match := re.search(r"\brss_mb=(\d+)", line)):
                found = int(match.group(1)) * 1024 * 1024
    return found


def _round_blobs(consortium: LargeConsortium, rounds: int) -> tuple[list[str], list[str]]:
    """The blob hashes of every accepted update and every committed model, from the chain."""
    updates: list[str] = []
    models: list[str] = []
    first = consortium.nodes[0].name
    height = int(consortium.status(first)["height"])
    start = 1
    while start <= height:
        blocks = consortium.blocks(first, start, 100)
        if not blocks:
            break
        for block in blocks:
            for signed in block["txs"]:
                tx = signed["tx"]
                if tx["kind"] == "update":
                    updates.append(str(tx["body"]["blob"]))
                elif tx["kind"] == "aggregate":
                    models.append(str(tx["body"]["model"]))
        start = int(blocks[-1]["header"]["height"]) + 1
    return updates, models


# --- the rows -------------------------------------------------------------------------------------
def _x(value: float, unit: float) -> float:
    return value / unit if unit > 0 else float("nan")


def measure(
    report: Report,
    params: int,
    members: int,
    validators: int,
    rounds: int,
    *,
    round_bound: float,
    total_bound: int,
    min_free: int,
    verify: bool,
    quiet: bool,
) -> dict[str, Any]:
    """One row: ``members`` nodes, ``members - validators`` of them training, ``params``."""
    trainers = max(1, members - validators)
    spec = mlp(width_for(params))
    count = mlp_parameters(spec.hidden[0])
    log(f"{label(params)} ({count:,} parameters, W={spec.hidden[0]}): floor ...", quiet=quiet)
    floor = measure_floor(spec, trainers, members)
    update = floor.update_bytes
    log(
        f"  update {update / MB:.1f} MB, floor {floor.total_s:.2f} s; {members} nodes ...",
        quiet=quiet,
    )
    _, run = run_round(
        spec,
        members,
        trainers,
        rounds,
        round_bound=round_bound,
        total_bound=total_bound,
        min_free=min_free,
        verify=verify,
        quiet=quiet,
    )
    names_t = [f"member-{i + 1:02d}" for i in range(trainers)]
    names_v = [f"member-{i + 1:02d}" for i in range(trainers, members)]

    def above(names: list[str]) -> float:
        values = [run.peak.get(n, 0) - run.idle.get(n, 0) for n in names if n in run.idle]
        return max(values) if values else float("nan")

    v_above, t_above = above(names_v), above(names_t)
    # the trainers' growth above their own idle as the node logs it once listening, torch's
    # one-time training start (warm_up) paid, as tests/training/test_training_memory.py counts
    t_ready = [run.peak[n] - r for n, r in run.ready.items() if n in names_t and n in run.peak]
    t_above_ready = max(t_ready) if t_ready else float("nan")
    round_s = statistics.median(run.round_s) if run.round_s else float("nan")
    # what the nodes computed a round (rounds 2+), summed: load-proof beside the round's seconds
    cpu_s = sum(run.cpu_per_round.values()) if run.cpu_per_round else float("nan")
    fetched_v, fetched_t, written_v, written_t = _bytes_per_round(run, names_v, names_t, rounds)
    if run.traffic:  # the nodes' own counters (received) replace the blob stores' growth
        fetched_v, fetched_t = (_traffic(run, names, 1, rounds) for names in (names_v, names_t))
    sent_v, sent_t = (_traffic(run, names, 0, rounds) for names in (names_v, names_t))
    row: dict[str, Any] = {
        "params": label(params),
        "parameters": count,
        "width": spec.hidden[0],
        "members": members,
        "trainers": trainers,
        "update MB": update / MB,
        "idle MB": statistics.median(run.idle.values()) / MB if run.idle else float("nan"),
        "validator +MB": v_above / MB,
        "validator x upd": _x(v_above, update),
        "trainer +MB": t_above / MB,
        "trainer x upd": _x(t_above, update),
        "trainer x upd, idle after warm-up": _x(t_above_ready, update),
        "round s": round_s,
        "floor s": floor.total_s,
        "x floor": _x(round_s, floor.total_s),
        "floor parts s": (
            f"train {floor.train_s:.2f} + net {floor.transfer_s:.2f} + sha {floor.sha256_s:.2f}"
            f" + agg {floor.aggregate_s:.2f} (each the best of {FLOOR_REPEATS})"
        ),
        "validator in MB/rnd": fetched_v / MB,
        "trainer in MB/rnd": fetched_t / MB,
        "validator out MB/rnd": sent_v / MB,
        "trainer out MB/rnd": sent_t / MB,
        "bytes from": "/v1/status traffic" if run.traffic else "blob store growth",
        "written MB/rnd (v/t)": f"{written_v / MB:.0f} / {written_t / MB:.0f}",
        "deep verify": (
            f"{sum(run.verified.values())}/{len(run.verified)} ok" if run.verified else "-"
        ),
        "result": f"FAILED: {run.failure}" if run.failure else "ok",
        "peak_rss_bytes": run.peak,
        "idle_rss_bytes": run.idle,
        "round_s_all": run.round_s,
        "node CPU s/rnd": cpu_s,
        # the round's length if the nodes' work were spread perfectly over every core: a round
        # near it waits on nothing, it is short of CPU
        "CPU-bound s": cpu_s / (os.cpu_count() or 1),
        "cpu_per_round_s": run.cpu_per_round,
    }
    report.add(**row)
    return row


def _bytes_per_round(
    run: NodeRun, validators: list[str], trainers: list[str], rounds: int
) -> tuple[float, float, float, float]:
    """Bytes a validator / a trainer fetched from peers and wrote itself, per round (max).

    Every update in a store but the node's own was fetched (updates are the same size, so a
    trainer fetched all but one); the models it computed itself (validators recompute every
    aggregate), written with its own update.
    """
    if not run.stored or not run.updates:
        return (float("nan"),) * 4  # type: ignore[return-value]
    updates, models = set(run.updates), set(run.models)

    def per(name: str, trains: bool) -> tuple[float, float]:
        stored = run.stored.get(name, {})
        held = [size for digest, size in stored.items() if digest in updates]
        own = (sum(held) / len(held)) * rounds if trains and held else 0.0
        made = sum(size for digest, size in stored.items() if digest in models)
        return (sum(held) - own) / rounds, (own + made) / rounds

    v = [per(n, False) for n in validators] or [(float("nan"), float("nan"))]
    t = [per(n, True) for n in trainers] or [(float("nan"), float("nan"))]
    return max(a for a, _ in v), max(a for a, _ in t), max(b for _, b in v), max(b for _, b in t)


def _traffic(run: NodeRun, names: list[str], side: int, rounds: int) -> float:
    """The most blob bytes a node of ``names`` sent (side 0) or received (1) a round."""
    values = [run.traffic[n][side] for n in names if n in run.traffic]
    return max(values) / rounds if values else float("nan")


def plan_on_paper(report: Report, target: int) -> None:
    """A row for ``target`` parameters from the slopes of the largest sizes that passed."""
    done = [r for r in report.rows if r.get("result") == "ok" and r.get("members") == 4]
    done = done or [r for r in report.rows if r.get("result") == "ok"]
    if not done:
        return
    done.sort(key=lambda r: r["parameters"])
    big = done[-1]
    per_param_round = big["round s"] / big["parameters"]
    if len(done) >= 2:
        small = done[-2]
        slope = (big["round s"] - small["round s"]) / (big["parameters"] - small["parameters"])
        per_param_round = slope if slope > 0 else per_param_round
    update = 4 * target
    scale = target / big["parameters"]
    round_s = big["round s"] + per_param_round * (target - big["parameters"])
    report.add(
        params=label(target),
        parameters=target,
        width=width_for(target),
        members=big["members"],
        trainers=big["trainers"],
        **{
            "update MB": update / MB,
            "validator +MB": big["validator x upd"] * update / MB,
            "validator x upd": big["validator x upd"],
            "trainer +MB": big["trainer x upd"] * update / MB,
            "trainer x upd": big["trainer x upd"],
            "round s": round_s,
            "floor s": big["floor s"] * scale,
            "x floor": _x(round_s, big["floor s"] * scale),
            "validator in MB/rnd": big["validator in MB/rnd"] * scale,
            "trainer in MB/rnd": big["trainer in MB/rnd"] * scale,
            "trainer out MB/rnd": big.get("trainer out MB/rnd", float("nan")) * scale,
            "result": f"planned on paper from {big['params']} (linear in parameters)",
        },
    )


COLUMNS = [
    "params",
    "members",
    "trainers",
    "update MB",
    "idle MB",
    "validator +MB",
    "validator x upd",
    "trainer +MB",
    "trainer x upd",
    "trainer x upd, idle after warm-up",
    "round s",
    "floor s",
    "x floor",
    "node CPU s/rnd",
    "CPU-bound s",
    "validator in MB/rnd",
    "trainer in MB/rnd",
    "trainer out MB/rnd",
    "deep verify",
    "result",
]


def run(
    sizes: Sequence[int],
    *,
    members: int,
    validators: int,
    rounds: int,
    wide: Sequence[tuple[int, int]],
    round_bound: float,
    memory_bound_mb: int,
    min_free_mb: int,
    verify: bool,
    plan: int | None,
    quiet: bool = False,
) -> Report:
    report = Report(
        bench="large_model",
        title="Large models through real nodes: memory above idle, round time vs floor, bytes",
        settings={
            "params": [label(p) for p in sizes],
            "members": members,
            "validators_only": validators,
            "rounds": rounds,
            "wide": [f"{label(p)}:{n}" for p, n in wide],
            "round_bound_s": round_bound,
            "memory_bound_mb": memory_bound_mb,
            "min_free_mb": min_free_mb,
        },
        columns=COLUMNS,
    )
    bounds = {
        "round_bound": round_bound,
        "total_bound": memory_bound_mb * MiB,
        "min_free": min_free_mb * MiB,
        "verify": verify,
        "quiet": quiet,
    }
    jobs = [(p, members) for p in sizes] + list(wide)
    for params, n in jobs:
        row = measure(report, params, n, validators, rounds, **bounds)  # type: ignore[arg-type]
        log(f"  -> {row['result']}", quiet=quiet)
        save_partial(report)
    if plan:
        plan_on_paper(report, plan)
    report.notes += [
        "x upd = peak RSS above the node's idle baseline / update size (issue 19's goals: "
        "validator <= 2, trainer <= 5); the idle baseline is a node started without --train; "
        "'idle after warm-up' takes a trainer's own resident size as its node logged it once "
        "listening with --train (torch's one-time training start paid, as "
        "tests/training/test_training_memory.py counts it)",
        "floor = one member's local training + raw loopback transfer of the updates a "
        "validator fetches + sha256 of them + one exact aggregate() pass, in this process",
        "in / out MB/rnd = blob bytes received / sent per round (the nodes' /v1/status traffic "
        "where they show it, else the updates their blob stores gained); a validator must "
        "fetch every update but its own; the minimum a member needs is one update up, one "
        "model down",
        "all nodes share this machine's 2 cores: work a deployment spreads over N machines is "
        "serialised here",
    ]
    return report


def save_partial(report: Report) -> None:
    """The rows so far, on disk: a long run stopped half-way still leaves its figures."""
    import bench.common as common

    common.RESULTS.mkdir(parents=True, exist_ok=True)
    path = common.RESULTS / f"{report.bench}.partial.json"
    path.write_text(json.dumps(report.to_dict(), indent=2, default=str) + "\n")


def parse_wide(text: str) -> tuple[int, int]:
    """``25M:10`` -> (25,000,000 parameters, 10 members)."""
    size, _, count = text.partition(":")
    return parse_params(size), int(count or 10)


def main(argv: Sequence[str] | None = None) -> int:
    global KEEP_LOGS, EMPTY_BLOCKS, FLOOR_REPEATS
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--params", nargs="*", default=["1M", "10M", "25M"])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--validators", type=int, default=1, help="nodes that only validate")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--wide", nargs="*", default=[], help="SIZE:MEMBERS rows, e.g. 25M:10")
    parser.add_argument("--round-bound", type=float, default=600.0)
    parser.add_argument("--memory-bound-mb", type=int, default=12288)
    parser.add_argument("--min-free-mb", type=int, default=4096)
    parser.add_argument("--plan", default="1B", help="a size planned on paper ('' for none)")
    parser.add_argument("--no-verify", action="store_true", help="skip verify-chain --deep")
    parser.add_argument("--keep-logs", type=Path, help="copy every node's log into this folder")
    parser.add_argument(
        "--floor-repeats",
        type=int,
        default=FLOOR_REPEATS,
        help="measure the floor this many times a row and take each part at its fastest",
    )
    parser.add_argument(
        "--no-empty-blocks",
        action="store_true",
        help="nodes without --empty-blocks (bcfl node's default: blocks with content only); "
        "the nodes' CPU a round was the same either way at 10M (bench/README.md)",
    )
    args = parser.parse_args(argv)
    if args.floor_repeats < 1:
        parser.error("--floor-repeats must be at least 1")
    FLOOR_REPEATS = args.floor_repeats
    KEEP_LOGS = args.keep_logs
    EMPTY_BLOCKS = not args.no_empty_blocks
    sizes = [parse_params(p) for p in args.params]
    wide = [parse_wide(w) for w in args.wide]
    if args.quick:
        sizes, wide = [parse_params("1M")], []
    report = run(
        sizes,
        members=args.members,
        validators=args.validators,
        rounds=args.rounds,
        wide=wide,
        round_bound=args.round_bound,
        memory_bound_mb=args.memory_bound_mb,
        min_free_mb=args.min_free_mb,
        verify=not args.no_verify,
        plan=parse_params(args.plan) if args.plan else None,
        quiet=args.json,
    )
    emit(report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
