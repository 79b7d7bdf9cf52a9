"""bcfl against Flower: the same FL job, time per round, start-up and final accuracy.

Usage::

    make bench-flower                      # creates .venv-bench with flwr[simulation], runs this
    .venv-bench/bin/python bench/flower_compare.py [--rounds 20] [--members 10] [--tls] [--json]

One job, three ways: the digits MLP (4,810 parameters), the shipped Dirichlet(0.5) partition of
the digits training rows among 10 members, one local epoch of SGD (lr 0.05, batch 32) per
round with ``bcfl_cli.fl.training.train_local`` and the same per-member, per-round seeds,
FedAvg weighted by samples, scored on ``sample_data/digits-test.csv``:

(a) plain in-process FedAvg, no ledger, signatures or HTTP (bench/common.py): the floor;
(b) Flower 1.42's simulation engine (Ray backend, one CPU per client so both cores are used,
    no client-side evaluation), run in a child process; the per-round time is the interval
    between Flower's server-side ``evaluate_fn`` calls. Each Ray actor loads the partitions
    once and keeps them in a module-level cache (a ``ClientApp`` closure is rebuilt for every
    message inside the actors, so a dict it captures never keeps anything); every actor writes
    its cache loads and hits to a per-pid file and the bench prints their sums;
(b') Flower 1.42's deployment engine (bench/flower_deploy.py): one ``flower-superlink`` and N
    ``flower-supernode`` processes on 127.0.0.1 (insecure mode), the same ClientApp and
    ServerApp (bench/flower_job.py, packaged in bench/flower_app) submitted with ``flwr run``;
    timed as (b). Its SuperNodes start one ``flwr-clientapp`` process per message, so its
    cache counters show one load per client call (``--no-deployment`` skips it);
(b'') with ``--tls``: the same deployment over TLS (a throwaway CA, the SuperLink serving with
    its certificate, SuperNodes and ``flwr run`` trusting the CA), arm ``flower-deployment-tls``;
(c) bcfl: one real ``bcfl node --train`` process per member on loopback, full BFT consensus,
    signed transactions, contract checks and the aggregate recomputed by every validator; the
    per-round time is the interval between committed aggregates as the first node logs them;
(c') with ``--tls``: the same nodes serving TLS 1.3 behind certificates pinned in the genesis
    (``bcfl node --tls``), arm ``bcfl-nodes-tls``, the fair pair of (b'').

``--arms`` names the arms to run instead (plain FedAvg always runs: every ratio is taken
against it): ``flower-simulation``, ``flower-deployment``, ``flower-deployment-tls``,
``bcfl-nodes``, ``bcfl-nodes-tls``.

Start-up is measured the same way in every arm, twice: launch -> the first member starts its
round-1 training, and launch -> the first aggregate exists (returned by plain FedAvg, handed to
Flower's ``evaluate_fn`` after round 1, committed on the first node's chain).

Flower is an optional extra (``pip install -e '.[bench]'``); without it this bench runs (a) and
(c) and says so. Absolute times on a shared 2-core machine are noisy: read the ratios.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    DIGITS_MLP,
    PLAN,
    FedRun,
    Report,
    base_parser,
    emit,
    load_members,
    load_test,
    log,
    plain_fedavg,
    ratio,
    run_nodes,
    torch_threads,
)

BENCH_VENV_PYTHON = ROOT / ".venv-bench" / "bin" / "python"

#: The arms besides plain FedAvg, in the order they run; the default set leaves out TLS.
ARMS = (
    "flower-simulation",
    "flower-deployment",
    "flower-deployment-tls",
    "bcfl-nodes",
    "bcfl-nodes-tls",
)
DEFAULT_ARMS = ("flower-simulation", "flower-deployment", "bcfl-nodes")
TLS_ARMS = ("flower-deployment-tls", "bcfl-nodes-tls")
#: Same-transport pairs whose ratios a report spells out: (bcfl arm, Flower arm).
PAIRS = (
    ("bcfl-nodes", "flower-deployment"),
    ("bcfl-nodes-tls", "flower-deployment-tls"),
    ("bcfl-nodes", "flower-simulation"),
    ("bcfl-nodes-tls", "bcfl-nodes"),
    ("flower-deployment-tls", "flower-deployment"),
)

#: The members' partitions, per process and per member count: in a Ray actor this module is
#: imported once, so the partitions load once per actor, not once per message.
_MEMBER_CACHE: dict[int, list[Any]] = {}
#: This process's cache loads and hits, and when it first started a training (wall clock).
_CACHE_COUNTS: dict[str, float] = {"loads": 0, "hits": 0, "first_train": float("inf")}


def cached_members(members: int) -> list[Any]:
    """The ``members`` partitions, loaded on this process's first call, counted either way."""
    if members in _MEMBER_CACHE:
        _CACHE_COUNTS["hits"] += 1
    else:
        _MEMBER_CACHE[members] = load_members(members)
        _CACHE_COUNTS["loads"] += 1
    return _MEMBER_CACHE[members]


def record_training(counter_dir: Path, started: float) -> None:
    """Write this process's cache counters and its first training start to ``<pid>.json``:
    the actors are separate processes, so the bench sums their files afterwards."""
    _CACHE_COUNTS["first_train"] = min(_CACHE_COUNTS["first_train"], started)
    target = counter_dir / f"{os.getpid()}.json"
    partial = target.with_suffix(".tmp")
    partial.write_text(json.dumps(_CACHE_COUNTS))
    partial.replace(target)


def sum_counters(counter_dir: Path) -> dict[str, Any]:
    """The actors' cache loads and hits summed, how many processes trained, and the earliest
    training start (None if no actor wrote a file)."""
    files = [json.loads(p.read_text()) for p in sorted(counter_dir.glob("*.json"))]
    first = min((f["first_train"] for f in files), default=None)
    return {
        "processes": len(files),
        "loads": int(sum(f["loads"] for f in files)),
        "hits": int(sum(f["hits"] for f in files)),
        "first_train": first,
    }


# --- (b) Flower, in a child process -------------------------------------------------------------
def _flower_child(members: int, rounds: int, seed: int, out: Path, launched: float) -> None:
    """Runs inside the child: the Flower ServerApp/ClientApp pair through run_simulation."""
    import logging

    from flwr.app import Context, Message
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation

    from bcfl_cli.fl.training import evaluate
    from bench.flower_job import serve, train_reply

    logging.getLogger("flwr").setLevel(logging.WARNING)
    counter_dir = out.parent / "counters"
    counter_dir.mkdir(exist_ok=True)

    client = ClientApp()

    @client.train()  # type: ignore[misc]
    def train(msg: Message, context: Context) -> Message:
        return train_reply(msg, context, members, seed, counter_dir)

    server = ServerApp()
    stamps: list[float] = []
    final: dict[str, Any] = {}

    @server.main()  # type: ignore[misc]
    def main(grid: Grid, context: Context) -> None:
        run_stamps, final["state"] = serve(grid, members, rounds)
        stamps.extend(run_stamps)

    run_simulation(
        server_app=server,
        client_app=client,
        num_supernodes=members,
        backend_config={
            "client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": os.cpu_count() or 1, "include_dashboard": False},
        },
    )
    done = time.time()
    accuracy = evaluate(DIGITS_MLP, final["state"], load_test())[1]
    out.write_text(
        json.dumps(
            {
                "launched": launched,
                "stamps": stamps,
                "done": done,
                "accuracy": accuracy,
                "flwr": _flwr_version(),
                "counters": sum_counters(counter_dir),
            }
        )
    )


def _flwr_version() -> str:
    from importlib.metadata import version

    return version("flwr")


def flower_python(explicit: str | None) -> str | None:
    """A Python that can import flwr: --flower-python, this one, or .venv-bench's."""
    candidates = [explicit] if explicit else [sys.executable, str(BENCH_VENV_PYTHON)]
    for python in candidates:
        if python and Path(python).exists():
            probe = subprocess.run(
                [python, "-c", "import flwr.simulation"],
                capture_output=True,
                check=False,
            )
            if probe.returncode == 0:
                return python
    return None


def run_flower(python: str, members: int, rounds: int, seed: int, *, quiet: bool = False) -> FedRun:
    with tempfile.TemporaryDirectory(prefix="bcfl-flower-") as tmp:
        out = Path(tmp) / "flower.json"
        launched = time.time()
        start = time.perf_counter()
        env = dict(os.environ, PYTHONPATH=str(ROOT), RAY_DEDUP_LOGS="0")
        env.setdefault("OMP_NUM_THREADS", "1")
        proc = subprocess.run(
            [
                python,
                str(Path(__file__).resolve()),
                "--flower-child",
                str(out),
                "--members",
                str(members),
                "--rounds",
                str(rounds),
                "--seed",
                str(seed),
                "--launched",
                repr(launched),
            ],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        total = time.perf_counter() - start
        if proc.returncode != 0 or not out.exists():
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise SystemExit(f"the Flower run failed (exit {proc.returncode}):\n{tail}")
        data = json.loads(out.read_text())
    stamps = data["stamps"]
    run = FedRun(f"Flower {data['flwr']} (Ray simulation)", rounds)
    counters = data["counters"]
    run.startup_s = stamps[0] - data["launched"]
    run.round_s = [b - a for a, b in itertools.pairwise(stamps)]
    run.total_s = total
    run.accuracy = data["accuracy"]
    if counters["first_train"] is not None:
        run.extra["first_training_s"] = counters["first_train"] - data["launched"]
    if len(stamps) > 1:  # stamps[0] scores the initial model, stamps[1] round 1's aggregate
        run.extra["first_aggregate_s"] = stamps[1] - data["launched"]
    run.extra["cache_loads"] = counters["loads"]
    run.extra["cache_hits"] = counters["hits"]
    run.extra["actor_processes"] = counters["processes"]
    return run


def with_startup(run: FedRun) -> FedRun:
    """Fill in the plain arm's two start-up figures: it trains as soon as the initial model
    exists and holds its first aggregate one round later. It loads the partitions once."""
    run.extra.setdefault("first_training_s", run.startup_s)
    if run.round_s:
        run.extra.setdefault("first_aggregate_s", run.startup_s + run.round_s[0])
    run.extra.setdefault("cache_loads", 1)
    run.extra.setdefault("cache_hits", None)
    return run


# --- the comparison ------------------------------------------------------------------------------
def run(
    members: int,
    rounds: int,
    *,
    seed: int = 0,
    flower: str | None = None,
    nodes: bool = True,
    deployment: bool = True,
    arms: Collection[str] | None = None,
    quiet: bool = False,
) -> Report:
    """Plain FedAvg and the ``arms`` (default DEFAULT_ARMS; ``nodes=False`` and
    ``deployment=False`` drop the bcfl and the Flower deployment arms), one after the other."""
    chosen = set(DEFAULT_ARMS if arms is None else arms)
    unknown = chosen - set(ARMS)
    if unknown:
        raise ValueError(f"unknown arms {sorted(unknown)}; known: {', '.join(ARMS)}")
    if not nodes:
        chosen -= {"bcfl-nodes", "bcfl-nodes-tls"}
    if not deployment:
        chosen -= {"flower-deployment", "flower-deployment-tls"}
    report = Report(
        bench="flower_compare",
        title=f"bcfl vs Flower: digits MLP, {members} members, Dirichlet 0.5, {rounds} rounds",
        settings={
            "members": members,
            "rounds": rounds,
            "seed": seed,
            "model": DIGITS_MLP.to_document(),
            "plan": PLAN.to_document(),
            "arms": [a for a in ARMS if a in chosen],
        },
        columns=[
            "arm",
            "to 1st training s",
            "to 1st aggregate s",
            "round s (median)",
            "x plain",
            "x Flower",
            "x Flower deploy",
            "x Flower deploy TLS",
            "accuracy",
            "total s",
            "data loads",
            "cache hits",
        ],
    )
    data, test = load_members(members), load_test()
    log("(a) plain in-process FedAvg ...", quiet=quiet)
    with torch_threads(1):
        runs = [with_startup(plain_fedavg(DIGITS_MLP, PLAN, data, test, rounds, seed=seed))]
    by_arm: dict[str, FedRun] = {}
    flower_arms = chosen & {"flower-simulation", "flower-deployment", "flower-deployment-tls"}
    python = flower_python(flower) if flower_arms else None
    if flower_arms and python is None:
        report.notes.append(
            "Flower skipped: flwr is not installed here (run `make bench-flower`, or pass "
            "--flower-python PATH)"
        )
    if python is not None and "flower-simulation" in chosen:
        log(f"(b) Flower simulation ({python}) ...", quiet=quiet)
        by_arm["flower-simulation"] = run_flower(python, members, rounds, seed, quiet=quiet)
    if python is not None and chosen & {"flower-deployment", "flower-deployment-tls"}:
        from bench.flower_deploy import run_flower_deployment

        for arm, tls in (("flower-deployment", False), ("flower-deployment-tls", True)):
            if arm in chosen:
                transport = "TLS" if tls else "insecure"
                log(
                    f"(b') Flower deployment engine, {members} SuperNodes, {transport} ...",
                    quiet=quiet,
                )
                by_arm[arm] = run_flower_deployment(
                    python, members, rounds, seed, quiet=quiet, tls=tls
                )
    for arm, tls in (("bcfl-nodes", False), ("bcfl-nodes-tls", True)):
        if arm in chosen:
            log(f"(c) bcfl nodes{' over TLS' if tls else ''} ...", quiet=quiet)
            node_run = run_nodes(DIGITS_MLP, PLAN, members, rounds, test=test, quiet=quiet, tls=tls)
            node_run.extra.setdefault("cache_loads", members)  # each node reads its partition once
            node_run.extra.setdefault("cache_hits", None)
            by_arm[arm] = node_run
    runs += [by_arm[a] for a in ARMS if a in by_arm]
    flower_run = by_arm.get("flower-simulation")
    deploy_run = by_arm.get("flower-deployment")
    deploy_tls_run = by_arm.get("flower-deployment-tls")
    plain = runs[0].median_round_s
    for r in runs:
        report.add(
            arm=r.name,
            **{
                "to 1st training s": r.extra.get("first_training_s"),
                "to 1st aggregate s": r.extra.get("first_aggregate_s"),
                "round s (median)": r.median_round_s,
                "x plain": ratio(r.median_round_s, plain),
                "x Flower": ratio(r.median_round_s, flower_run.median_round_s)
                if flower_run
                else None,
                "x Flower deploy": ratio(r.median_round_s, deploy_run.median_round_s)
                if deploy_run
                else None,
                "x Flower deploy TLS": ratio(r.median_round_s, deploy_tls_run.median_round_s)
                if deploy_tls_run
                else None,
                "accuracy": r.accuracy,
                "total s": r.total_s,
                "data loads": r.extra.get("cache_loads"),
                "cache hits": r.extra.get("cache_hits"),
            },
        )
    report.settings["runs"] = [r.to_dict() for r in runs]
    report.settings["pairs"] = pair_ratios(by_arm)
    report.notes.append(
        "x plain / x Flower: median time per round divided by that arm's (lower is faster)"
    )
    report.notes.append(
        "start-up, every arm: launch -> the first member starts round-1 training, and launch -> "
        "the first aggregate (plain: returned; Flower: handed to evaluate_fn; bcfl: committed)"
    )
    if flower_run is not None:
        report.notes.append(
            f"Flower data cache: {flower_run.extra['cache_loads']} loads, "
            f"{flower_run.extra['cache_hits']} hits over "
            f"{flower_run.extra['actor_processes']} actor processes "
            f"({members * rounds} client calls)"
        )
    for arm in ("flower-deployment", "flower-deployment-tls"):
        if arm in by_arm:
            deployed = by_arm[arm]
            report.notes.append(
                f"{deployed.name} data cache: {deployed.extra['cache_loads']} loads, "
                f"{deployed.extra['cache_hits']} hits over "
                f"{deployed.extra['actor_processes']} ClientApp processes "
                f"({members * rounds} client calls; Flower 1.42's SuperNode starts one "
                "flwr-clientapp process per message, so a per-process cache cannot hit); "
                f"{deployed.extra['killed_at_stop']} processes needed SIGKILL at the end"
            )
    for pair in report.settings["pairs"]:
        report.notes.append(
            f"{pair['arm']} / {pair['against']}: round {_fmt(pair['round'])}x, to 1st training "
            f"{_fmt(pair['to_first_training'])}x, to 1st aggregate "
            f"{_fmt(pair['to_first_aggregate'])}x, whole run {_fmt(pair['total'])}x"
        )
    return report


def pair_ratios(by_arm: dict[str, FedRun]) -> list[dict[str, Any]]:
    """For every pair of PAIRS that ran: round (median), both start-ups and the whole run of
    the first arm divided by the second's (below 1: the first is faster)."""

    def quotient(a: float | None, b: float | None) -> float | None:
        return None if a is None or b is None else ratio(a, b)

    out = []
    for arm, against in PAIRS:
        if arm in by_arm and against in by_arm:
            x, y = by_arm[arm], by_arm[against]
            out.append(
                {
                    "arm": arm,
                    "against": against,
                    "round": quotient(x.median_round_s, y.median_round_s),
                    "to_first_training": quotient(
                        x.extra.get("first_training_s"), y.extra.get("first_training_s")
                    ),
                    "to_first_aggregate": quotient(
                        x.extra.get("first_aggregate_s"), y.extra.get("first_aggregate_s")
                    ),
                    "total": quotient(x.total_s, y.total_s),
                }
            )
    return out


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flower-python", help="a Python with flwr[simulation] installed")
    parser.add_argument("--no-nodes", action="store_true", help="skip the bcfl node arm")
    parser.add_argument(
        "--no-deployment", action="store_true", help="skip Flower's deployment-engine arms"
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        help="also run the TLS arms: flower-deployment-tls and bcfl-nodes-tls",
    )
    parser.add_argument(
        "--arms",
        nargs="+",
        choices=ARMS,
        help=f"run these arms (plain FedAvg always runs); default: {' '.join(DEFAULT_ARMS)}",
    )
    parser.add_argument("--flower-child", type=Path, help=argparse_hidden())
    parser.add_argument("--launched", type=float, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.flower_child is not None:
        _flower_child(args.members, args.rounds, args.seed, args.flower_child, args.launched)
        return 0
    members, rounds = args.members, args.rounds
    if args.quick:  # a smoke run: 4 members (shipped 4-member partition), 3 rounds
        members, rounds = min(members, 4), min(rounds, 3)
    arms = list(args.arms or DEFAULT_ARMS)
    if args.tls:
        arms += [a for a in TLS_ARMS if a not in arms]
    report = run(
        members,
        rounds,
        seed=args.seed,
        flower=args.flower_python,
        nodes=not args.no_nodes,
        deployment=not args.no_deployment,
        arms=arms,
        quiet=args.json,
    )
    emit(report, as_json=args.json)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
