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
import json
import os
import platform
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

from bcfl_cli.fl.aggregation import UpdateInput, aggregate  # noqa: E402
from bcfl_cli.fl.data import Dataset, load_csv  # noqa: E402
from bcfl_cli.fl.models import initial_state, parameter_count  # noqa: E402
from bcfl_cli.fl.spec import AggregationSpec, ModelSpec, TrainingPlan  # noqa: E402
from bcfl_cli.fl.split import split_csv  # noqa: E402
from bcfl_cli.fl.training import evaluate, subseed, train_local  # noqa: E402

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
