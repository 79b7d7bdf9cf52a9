"""What every benchmark shares: the job, the no-ledger baseline, timing and output.

The baseline is the work a consortium does with everything that makes it a consortium taken
away: the same model, partitions, plan and seeds, trained with ``bcfl_cli.fl.training.
train_local`` and combined with ``bcfl_cli.fl.aggregation.aggregate`` (the code a node runs),
in one process, with no ledger, signatures, blob store or HTTP. Every bench measures its
baseline in the same run as the thing it judges, on the same (shared, noisy) machine, and
prints ratios; absolute seconds are only orders of magnitude here (see
``/work/shared/PITFALLS.md``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import itertools
import json
import os
import platform
import re
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bcfl_cli.demo.launcher import (  # noqa: E402
    GenesisPlan,
    LocalConsortium,
    Member,
    MemberPlan,
)
from bcfl_cli.fl.aggregation import UpdateInput, aggregate  # noqa: E402
from bcfl_cli.fl.data import Dataset, load_csv  # noqa: E402
from bcfl_cli.fl.models import initial_state, parameter_count  # noqa: E402
from bcfl_cli.fl.split import split_csv  # noqa: E402
from bcfl_cli.fl.training import evaluate, subseed, train_local  # noqa: E402
from bcfl_cli.protocol.spec import (  # noqa: E402
    AggregationSpec,
    ContractRules,
    ModelSpec,
    TrainingPlan,
)

DATA = ROOT / "sample_data"
RESULTS = ROOT / "bench" / "results"
CLASSES = 10
FEATURES = 64

#: The digits MLP of the example consortium (4,810 parameters).
DIGITS_MLP = ModelSpec(
    architecture="mlp", input_shape=[FEATURES], num_classes=CLASSES, hidden=[64], seed=0
)
#: The "~1M-parameter model" of issue 7: two 1024-wide hidden layers (1.13M parameters).
MLP_1M = ModelSpec(
    architecture="mlp", input_shape=[FEATURES], num_classes=CLASSES, hidden=[1024, 1024], seed=0
)
#: One local epoch of plain SGD on every row (no holdout, so no evaluation inside a round).
PLAN = TrainingPlan(lr=0.05, batch_size=32, local_epochs=1, holdout_fraction=0.0)
FEDAVG = AggregationSpec(rule="fedavg")
DIRICHLET = 0.5
SPLIT_SEED = 7


# --- the job ----------------------------------------------------------------------------------
def partition_dir(members: int) -> Path:
    """The Dirichlet(0.5) split of the digits training rows among ``members``.

    The shipped splits (4 and 10 members) are used as they are; any other count is split once
    with ``bcfl data split``'s library and cached under bench/results/.
    """
    shipped = DATA / "partitions" / "digits" / f"{members}-dir{DIRICHLET:g}"
    if shipped.is_dir():
        return shipped
    cached = RESULTS / "partitions" / f"digits-{members}-dir{DIRICHLET:g}"
    if not (cached / "DONE").exists():
        split_csv(
            DATA / "digits-train.csv",
            members,
            seed=SPLIT_SEED,
            dirichlet=DIRICHLET,
            out_dir=cached,
        )
        (cached / "DONE").write_text("ok\n")
    return cached


def partition_files(members: int) -> list[Path]:
    return sorted(partition_dir(members).glob("member-*.csv"))


def load_members(members: int) -> list[Dataset]:
    return [
        load_csv(p, num_classes=CLASSES, num_features=FEATURES) for p in partition_files(members)
    ]


def load_test() -> Dataset:
    return load_csv(DATA / "digits-test.csv", num_classes=CLASSES, num_features=FEATURES)


def member_seed(seed: int, index: int) -> int:
    """Member ``index``'s training seed; a round's seed derives from it as a node's trainer does."""
    return subseed(seed, f"member-{index}")


def round_seed(seed: int, index: int, round_number: int) -> int:
    return subseed(member_seed(seed, index), f"round-{round_number}")


@dataclass
class FedRun:
    """One federated training run: what every arm of a comparison reports."""

    name: str
    rounds: int
    startup_s: float = 0.0
    round_s: list[float] = field(default_factory=list)
    total_s: float = 0.0
    accuracy: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def median_round_s(self) -> float:
        return statistics.median(self.round_s) if self.round_s else float("nan")

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["median_round_s"] = self.median_round_s
        return out


def local_update(
    spec: ModelSpec,
    plan: TrainingPlan,
    state: dict[str, torch.Tensor],
    data: Dataset,
    *,
    seed: int,
    index: int,
    round_number: int,
) -> UpdateInput:
    """One member's update for one round, keyed as the aggregate orders it (a fixed hash)."""
    result = train_local(spec, plan, state, data, seed=round_seed(seed, index, round_number))
    key = hashlib.sha256(f"round-{round_number}/member-{index}".encode()).hexdigest()
    return UpdateInput(key, result.delta, result.num_samples)


def plain_fedavg(
    spec: ModelSpec,
    plan: TrainingPlan,
    members: Sequence[Dataset],
    test: Dataset | None,
    rounds: int,
    *,
    seed: int = 0,
    rule: AggregationSpec = FEDAVG,
) -> FedRun:
    """The no-ledger baseline: every member trains in turn, then one aggregate, per round."""
    run = FedRun("plain FedAvg (no ledger)", rounds)
    t0 = time.perf_counter()
    state = initial_state(spec)
    run.startup_s = time.perf_counter() - t0
    for r in range(1, rounds + 1):
        start = time.perf_counter()
        updates = [
            local_update(spec, plan, state, data, seed=seed, index=i, round_number=r)
            for i, data in enumerate(members)
        ]
        state = aggregate(rule, state, updates).new_state
        run.round_s.append(time.perf_counter() - start)
    run.total_s = time.perf_counter() - t0
    if test is not None:
        run.accuracy = evaluate(spec, state, test)[1]
    run.extra["parameters"] = parameter_count(spec)
    return run


@contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Tiny models train fastest on one thread; restore the caller's setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- timing -------------------------------------------------------------------------------------
def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def median_time(fn: Callable[[], Any], repeats: int = 3) -> tuple[float, list[float]]:
    """Median wall time of ``repeats`` calls (the machine is shared: one call proves little)."""
    times = [timed(fn)[0] for _ in range(max(1, repeats))]
    return statistics.median(times), times


def ratio(value: float, baseline: float) -> float:
    return value / baseline if baseline > 0 else float("nan")


# --- the machine ----------------------------------------------------------------------------------
def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a process (psutil if installed, else /proc; 0 where neither works)."""
    pid = os.getpid() if pid is None else pid
    try:
        import psutil

        return int(psutil.Process(pid).memory_info().rss)
    except ImportError:
        pass
    except Exception:
        return 0
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def machine() -> dict[str, Any]:
    """Where and when: benches on a shared 2-core box are only comparable with their load."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(terse=True),
    }


# --- output -------------------------------------------------------------------------------------
@dataclass
class Report:
    """One bench's result: a table of rows, the ratios against the baseline, and notes."""

    bench: str
    title: str
    settings: dict[str, Any]
    columns: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    machine_before: dict[str, Any] = field(default_factory=machine)
    load_after: list[float] = field(default_factory=list)

    def add(self, **row: Any) -> None:
        self.rows.append(row)

    def to_dict(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "title": self.title,
            "settings": self.settings,
            "machine": self.machine_before,
            "load_average_after": self.load_after,
            "rows": self.rows,
            "notes": self.notes,
        }


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN
            return "-"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.1:
            return f"{value:.3f}"
        return f"{value:.4f}"
    if value is None:
        return "-"
    return str(value)


def render_text(report: Report) -> str:
    """The table as Markdown (what bench/README.md quotes)."""
    lines = [
        "| " + " | ".join(report.columns) + " |",
        "|" + "---|" * len(report.columns),
    ]
    for row in report.rows:
        lines.append("| " + " | ".join(_cell(row.get(c)) for c in report.columns) + " |")
    return "\n".join(lines)


def emit(report: Report, *, as_json: bool, save: bool = True) -> None:
    """Print the report (rich table, or one JSON document with --json); keep a copy on disk."""
    report.load_after = load_average()
    payload = report.to_dict()
    if save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{report.bench}.json").write_text(json.dumps(payload, indent=2) + "\n")
    if as_json:
        print(json.dumps(payload, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 160)
    table = Table(title=report.title, title_justify="left")
    for column in report.columns:
        table.add_column(column, justify="left" if column == report.columns[0] else "right")
    for row in report.rows:
        table.add_row(*(_cell(row.get(c)) for c in report.columns))
    console.print(table)
    m = report.machine_before
    console.print(
        f"[dim]{m['date']}, {m['cores']} cores, load {m['load_average']} -> "
        f"{report.load_after}, Python {m['python']}, torch {m['torch']}[/dim]"
    )
    for note in report.notes:
        console.print(f"[dim]- {note}[/dim]")


def base_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print one JSON document instead")
    parser.add_argument("--quick", action="store_true", help="a short run (what `make bench` does)")
    return parser


def log(message: str, *, quiet: bool = False) -> None:
    """Progress on stderr, so --json keeps stdout machine-readable."""
    if not quiet:
        print(message, file=sys.stderr, flush=True)


# --- real nodes ---------------------------------------------------------------------------------
PASSPHRASE = "bench passphrase, not a secret"
GENESIS_TIME_MS = 1_763_000_000_000
#: The contract's norm bound: loose, as a bench measures honest rounds (the fault suites attack).
BENCH_CONTRACT_NORM = 1000.0


def genesis_plan(
    spec: ModelSpec,
    plan: TrainingPlan,
    *,
    rounds: int,
    min_updates: int,
    deadline_blocks: int,
    max_blob_bytes: int = 256 * 1024 * 1024,
    tls: bool = False,
) -> GenesisPlan:
    """The bench's genesis: ``spec`` trained with ``plan`` for ``rounds`` rounds, FedAvg; with
    ``tls``, every founder's node certificate pinned (``consortium.tls = "pinned"``)."""
    training = plan.model_copy(
        update={"rounds": rounds, "min_updates": min_updates, "deadline_blocks": deadline_blocks}
    )
    return GenesisPlan(
        model=spec,
        training=training,
        contract=ContractRules(
            max_update_norm=BENCH_CONTRACT_NORM, min_samples=1, max_blob_bytes=max_blob_bytes
        ),
        aggregation=FEDAVG,
        name="Bench Consortium",
        tls="pinned" if tls else None,
    )


LOG_LINE = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (\w+) ([\w.]+): (.*?)((?: \w+=\S*)*)$"
)
LOG_FIELD = re.compile(r" (\w+)=(\S*)")


def parse_log(path: Path) -> list[dict[str, Any]]:
    """One dict per line of a text-format node log: ts (seconds), logger, msg, fields."""
    out: list[dict[str, Any]] = []
    if not path.is_file():
        return out
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m is None:
            continue
        stamp = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        entry: dict[str, Any] = {"ts": stamp, "logger": m.group(3), "msg": m.group(4)}
        entry.update(dict(LOG_FIELD.findall(m.group(5) or "")))
        out.append(entry)
    return out


def rounds_from_log(path: Path, rounds: int) -> tuple[float, list[float]] | None:
    """When round 1 opened and each round closed (wall-clock seconds), from a node's
    ``committed`` log lines; None unless the log holds all ``rounds``."""
    opened = float("nan")
    closed: dict[int, float] = {}
    for entry in parse_log(path):
        if entry["msg"] != "committed" or "round" not in entry:
            continue
        number, state = int(entry["round"]), entry.get("round_state")
        if number >= 1 and opened != opened:
            opened = entry["ts"]
        for r in range(1, (number if state == "closed" else number - 1) + 1):
            closed.setdefault(r, entry["ts"])
    if opened != opened or any(r not in closed for r in range(1, rounds + 1)):
        return None
    return opened, [closed[r] for r in range(1, rounds + 1)]


def first_training_from_logs(paths: Sequence[Path]) -> float | None:
    """When the first member began training round 1 (wall-clock seconds): the earliest
    ``round 1: training`` line of the nodes' trainers; None if no log holds one."""
    starts = [
        entry["ts"]
        for path in paths
        for entry in parse_log(path)
        if entry["msg"] == "round 1: training"
    ]
    return min(starts) if starts else None


class RoundTimeout(RuntimeError):
    """The rounds did not finish in time; ``opened`` and ``closed`` say how far they got."""

    def __init__(
        self, message: str, opened: float = float("nan"), closed: list[float] | None = None
    ):
        super().__init__(message)
        self.opened = opened
        self.closed = closed or []


class MemoryBoundExceeded(RuntimeError):
    """The nodes together took more memory than the bench allows."""


def member_plans(members: int, spare: int, files: Sequence[Path | None]) -> list[MemberPlan]:
    """Founders ``member-NN`` (trainer and validator, power 1), then ``spare`` members
    ``spare-NN`` that only train (power 0); each trains on ``files`` in turn."""
    founders = [
        MemberPlan(f"member-{i + 1:02d}", data=files[i % len(files)]) for i in range(members)
    ]
    spares = [
        MemberPlan(
            f"spare-{i + 1:02d}",
            roles=("trainer",),
            power=0,
            data=files[(members + i) % len(files)],
        )
        for i in range(spare)
    ]
    return founders + spares


class BenchConsortium(LocalConsortium):
    """``members`` real ``bcfl node`` processes on loopback, each training on its partition.

    The library's ``LocalConsortium`` (the one harness of ``bcfl demo``, the tests and the
    benches) with what the benches measure on top: round times from launch, resident memory,
    the final model. Founders are ``member-NN``; ``spare`` more members named ``spare-NN`` only
    train (power 0) and are not started with the others: nodes started late to measure
    catch-up. The nodes run with their own defaults unless a bench asks otherwise, at the
    empty-block pace every figure in bench/README.md was taken at, logging text lines (which
    ``parse_log`` reads). With ``tls`` every node serves TLS 1.3 behind its certificate pinned
    in the genesis (``bcfl node --tls``, as ``bcfl demo --tls``). Always use it as a context
    manager.
    """

    def __init__(
        self,
        root: Path,
        spec: ModelSpec,
        plan: TrainingPlan,
        members: int,
        rounds: int,
        *,
        data: Sequence[Path | None] | None = None,
        empty_block_interval: float | None = None,
        timeout_propose_ms: int | None = None,
        deadline_blocks: int = 1000,
        spare: int = 0,
        max_blob_bytes: int = 256 * 1024 * 1024,
        tls: bool = False,
    ) -> None:
        files = list(data) if data is not None else list(partition_files(members))
        plans = member_plans(members, spare, files)
        super().__init__(
            root,
            plans,
            genesis_plan(
                spec,
                plan,
                rounds=rounds,
                min_updates=members,
                deadline_blocks=deadline_blocks,
                max_blob_bytes=max_blob_bytes,
                tls=tls,
            ),
            passphrase=PASSPHRASE,
            genesis_time_ms=GENESIS_TIME_MS,
            empty_block_interval=empty_block_interval,
            empty_blocks=True,
            timeout_propose_ms=timeout_propose_ms,
            log_json=False,
            env={"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)},
        )
        self.spec = spec
        self.rounds = rounds
        self.nodes: list[Member] = [self.members[m.name] for m in plans[:members]]
        self.spares: list[Member] = [self.members[m.name] for m in plans[members:]]
        self.launched = 0.0
        self.launched_wall = 0.0
        self.peak_rss: list[int] = []
        self.peak_total_rss = 0

    def __enter__(self) -> BenchConsortium:
        return self

    def start_founders(self) -> None:
        """Start every founder's node (not the spares), each peered with the other founders."""
        self.launched = time.perf_counter()
        self.launched_wall = time.time()
        urls = [n.url for n in self.nodes]
        for node in self.nodes:
            self.start(node.name, peers=[u for u in urls if u != node.url])

    def node_status(self, node: Member) -> dict[str, Any] | None:
        """``/v1/status`` of ``node``, None while it does not answer; NodeError once it exited."""
        self.check_alive(node.name)
        return self.try_status(node.name)

    def watch_rounds(
        self,
        *,
        timeout: float,
        poll: float = 0.05,
        quiet: bool = False,
        memory_limit: int | None = None,
    ) -> tuple[float, list[float]]:
        """Launch -> round 1 open (seconds), and the time each round closed (from launch).

        Observed on the first node; a round counts when its aggregate is committed there.
        Samples every node's resident memory on the way (``peak_rss``) and gives up with
        ``MemoryBoundExceeded`` once their sum passes ``memory_limit`` bytes.
        """
        first = self.nodes[0]
        opened_at = float("nan")
        closed: dict[int, float] = {}
        deadline = time.perf_counter() + timeout
        next_sample = 0.0
        while len(closed) < self.rounds:
            now = time.perf_counter()
            if now >= next_sample:
                self._sample_rss(memory_limit)
                next_sample = now + 0.25
            if now > deadline:
                raise RoundTimeout(
                    f"timed out after {timeout:g} s: {len(closed)} of {self.rounds} rounds closed",
                    opened_at,
                    [closed[r] for r in sorted(closed)],
                )
            status = self.node_status(first)
            if status is not None:
                rnd = status["round"]
                number, state = int(rnd["number"]), rnd["state"]
                if number >= 1 and opened_at != opened_at:
                    opened_at = now - self.launched
                done = number if state == "closed" else number - 1
                for r in range(1, done + 1):
                    if r not in closed:
                        closed[r] = now - self.launched
                        log(f"  round {r} closed at {closed[r]:.2f} s", quiet=quiet)
            time.sleep(poll)
        return opened_at, [closed[r] for r in sorted(closed)]

    def node_log(self, node: Member) -> Path:
        """The node's own log file (``bcfl node`` writes HOME/node/node.log)."""
        return node.home.node_dir / "node.log"

    def logged_rounds(self) -> tuple[float, list[float]] | None:
        """Launch -> round 1 open, and launch -> each round closed, from the first node's own
        commit log (millisecond stamps, no observer's polling in them); None if incomplete."""
        found = rounds_from_log(self.node_log(self.nodes[0]), self.rounds)
        if found is None:
            return None
        opened, closed = found
        return opened - self.launched_wall, [c - self.launched_wall for c in closed]

    def final_state(self) -> dict[str, torch.Tensor]:
        """The global model after the last round, read from the first node's blob store."""
        from bcfl_cli.fl.tensors import decode_tensors
        from bcfl_cli.store.blobs import BlobStore

        status = self.node_status(self.nodes[0])
        if status is None:
            raise RuntimeError("the first node does not answer")
        digest = status["round"].get("model") or status["round"]["base_model"]
        blobs = BlobStore(self.nodes[0].home.blob_dir)
        limit = 1 << 30
        return decode_tensors(blobs.get(digest, max_bytes=limit), max_bytes=limit)

    def _sample_rss(self, memory_limit: int | None) -> None:
        current = self.rss()
        if not self.peak_rss:
            self.peak_rss = [0] * len(current)
        self.peak_rss = [max(a, b) for a, b in zip(self.peak_rss, current, strict=True)]
        self.peak_total_rss = max(self.peak_total_rss, sum(current))
        if memory_limit is not None and sum(current) > memory_limit:
            raise MemoryBoundExceeded(
                f"nodes hold {sum(current) / 2**20:.0f} MiB, over the bound of "
                f"{memory_limit / 2**20:.0f} MiB"
            )

    def rss(self) -> list[int]:
        return [rss_bytes(n.proc.pid) if n.proc is not None else 0 for n in self.nodes]


#: How often ``run_nodes`` asks the first node how far it got. Round times come from the node's
#: own log; a faster poll only loads the node it times (at 50 ms, ten-node rounds ran 10-20%
#: slower in one side-by-side check).
POLL_S = 0.25


def run_nodes(
    spec: ModelSpec,
    plan: TrainingPlan,
    members: int,
    rounds: int,
    *,
    test: Dataset | None = None,
    timeout: float | None = None,
    quiet: bool = False,
    keep: Path | None = None,
    memory_limit: int | None = None,
    max_blob_bytes: int | None = None,
    partial: bool = True,
    tls: bool = False,
) -> FedRun:
    """One training run through real nodes: start-up, per-round times, final accuracy.

    ``extra`` holds each node's resident memory at the end (``rss_bytes``) and at its peak
    (``peak_rss_bytes``, sampled every 0.25 s) and the peak of their sum. With ``partial``, a
    run that times out after at least one round reports the rounds it finished (``incomplete``
    in ``extra`` and in the name say so) instead of failing. Start-up and round times are the
    first node's commit times from its log (``timing`` says which; the poll's own are kept in
    ``polled_round_s``), as Flower's are its server's own stamps. With ``tls`` the nodes talk
    TLS 1.3 with pinned certificates (``bcfl node --tls``).
    """
    import shutil
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="bcfl-bench-nodes-")) if keep is None else keep
    run = FedRun(f"bcfl, {members} nodes (BFT{', TLS' if tls else ''})", rounds)
    try:
        options = {} if max_blob_bytes is None else {"max_blob_bytes": max_blob_bytes}
        with BenchConsortium(root, spec, plan, members, rounds, tls=tls, **options) as consortium:
            consortium.start_founders()
            limit = timeout if timeout is not None else 300.0 + 120.0 * rounds
            try:
                opened, closed = consortium.watch_rounds(
                    timeout=limit, poll=POLL_S, quiet=quiet, memory_limit=memory_limit
                )
            except RoundTimeout as exc:
                if not (partial and exc.closed):
                    raise
                opened, closed = exc.opened, exc.closed
                run.extra["incomplete"] = str(exc)
                run.name += f" ({len(closed)} of {rounds} rounds in time)"
            finally:
                run.extra["peak_rss_bytes"] = consortium.peak_rss
                run.extra["peak_total_rss_bytes"] = consortium.peak_total_rss
            polled = [b - a for a, b in itertools.pairwise([opened, *closed])]
            logged = None if "incomplete" in run.extra else consortium.logged_rounds()
            if logged is not None:
                # the first node's own commit times; the observer's (every POLL_S) kept beside
                opened, closed = logged
                run.extra["timing"] = "commit times in the first node's log"
                run.extra["polled_round_s"] = polled
            else:
                run.extra["timing"] = f"polled every {POLL_S} s"
            run.startup_s = opened
            run.round_s = [b - a for a, b in itertools.pairwise([opened, *closed])]
            # start-up as every arm of flower_compare defines it: launch -> the first member
            # starts training, and launch -> the first aggregate is committed
            trained = first_training_from_logs([consortium.node_log(n) for n in consortium.nodes])
            if trained is not None:
                run.extra["first_training_s"] = trained - consortium.launched_wall
            if closed:
                run.extra["first_aggregate_s"] = closed[0]
            run.total_s = closed[-1]
            run.extra["rss_bytes"] = consortium.rss()
            state = consortium.final_state()
        run.accuracy = evaluate(spec, state, test if test is not None else load_test())[1]
        run.extra["parameters"] = parameter_count(spec)
    finally:
        if keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return run
