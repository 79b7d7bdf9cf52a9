"""bcfl against Flower: the same FL job, time per round, start-up and final accuracy.

Usage::

    make bench-flower                      # creates .venv-bench with flwr[simulation], runs this
    .venv-bench/bin/python bench/flower_compare.py [--rounds 20] [--members 10] [--json]

One job, three ways: the digits MLP (4,810 parameters), the shipped Dirichlet(0.5) partition of
the digits training rows among 10 members, one local epoch of SGD (lr 0.05, batch 32) per
round with ``bcfl_cli.fl.training.train_local`` and the same per-member, per-round seeds,
FedAvg weighted by samples, scored on ``sample_data/digits-test.csv``:

(a) plain in-process FedAvg, no ledger, signatures or HTTP (bench/common.py): the floor;
(b) Flower 1.42's simulation engine (Ray backend, one CPU per client so both cores are used,
    no client-side evaluation), run in a child process; the per-round time is the interval
    between Flower's server-side ``evaluate_fn`` calls, start-up is launch -> round 1 starts;
(c) bcfl: one real ``bcfl node --train`` process per member on loopback, full BFT consensus,
    signed transactions, contract checks and the aggregate recomputed by every validator; the
    per-round time is the interval between committed aggregates as the first node logs them,
    start-up is launch -> round 1 opens on chain.

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
from collections.abc import Sequence
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


# --- (b) Flower, in a child process -------------------------------------------------------------
def _flower_child(members: int, rounds: int, seed: int, out: Path, launched: float) -> None:
    """Runs inside the child: the Flower ServerApp/ClientApp pair through run_simulation."""
    import logging

    import torch
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation

    from bcfl_cli.fl.models import initial_state
    from bcfl_cli.fl.training import evaluate, train_local
    from bench.common import round_seed

    logging.getLogger("flwr").setLevel(logging.WARNING)
    cache: dict[str, Any] = {}

    client = ClientApp()

    @client.train()  # type: ignore[misc]
    def train(msg: Message, context: Context) -> Message:
        torch.set_num_threads(1)
        if "data" not in cache:
            cache["data"] = load_members(members)
        pid = int(context.node_config["partition-id"])
        state = msg.content["arrays"].to_torch_state_dict()
        server_round = int(msg.content["config"]["server-round"])
        result = train_local(
            DIGITS_MLP,
            PLAN,
            state,
            cache["data"][pid],
            seed=round_seed(seed, pid, server_round),
        )
        new = {k: (state[k] + result.delta[k]).contiguous() for k in state}
        content = RecordDict(
            {
                "arrays": ArrayRecord(new),
                "metrics": MetricRecord({"num-examples": result.num_samples}),
            }
        )
        return Message(content=content, reply_to=msg)

    server = ServerApp()
    stamps: list[float] = []
    final: dict[str, Any] = {}

    @server.main()  # type: ignore[misc]
    def main(grid: Grid, context: Context) -> None:
        strategy = FedAvg(
            fraction_train=1.0,
            fraction_evaluate=0.0,
            min_train_nodes=members,
            min_available_nodes=members,
        )

        def stamp(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            stamps.append(time.time())
            return None

        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(initial_state(DIGITS_MLP)),
            num_rounds=rounds,
            evaluate_fn=stamp,
        )
        final["state"] = result.arrays.to_torch_state_dict()

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
    run.startup_s = stamps[0] - data["launched"]
    run.round_s = [b - a for a, b in itertools.pairwise(stamps)]
    run.total_s = total
    run.accuracy = data["accuracy"]
    return run


# --- the comparison ------------------------------------------------------------------------------
def run(
    members: int,
    rounds: int,
    *,
    seed: int = 0,
    flower: str | None = None,
    nodes: bool = True,
    quiet: bool = False,
) -> Report:
    report = Report(
        bench="flower_compare",
        title=f"bcfl vs Flower: digits MLP, {members} members, Dirichlet 0.5, {rounds} rounds",
        settings={
            "members": members,
            "rounds": rounds,
            "seed": seed,
            "model": DIGITS_MLP.to_document(),
            "plan": PLAN.to_document(),
        },
        columns=[
            "arm",
            "start-up s",
            "round s (median)",
            "x plain",
            "x Flower",
            "accuracy",
            "total s",
        ],
    )
    data, test = load_members(members), load_test()
    log("(a) plain in-process FedAvg ...", quiet=quiet)
    with torch_threads(1):
        runs = [plain_fedavg(DIGITS_MLP, PLAN, data, test, rounds, seed=seed)]
    flower_run: FedRun | None = None
    python = flower_python(flower)
    if python is None:
        report.notes.append(
            "Flower skipped: flwr is not installed here (run `make bench-flower`, or pass "
            "--flower-python PATH)"
        )
    else:
        log(f"(b) Flower simulation ({python}) ...", quiet=quiet)
        flower_run = run_flower(python, members, rounds, seed, quiet=quiet)
        runs.append(flower_run)
    if nodes:
        log("(c) bcfl nodes ...", quiet=quiet)
        node_run = run_nodes(DIGITS_MLP, PLAN, members, rounds, test=test, quiet=quiet)
        runs.append(node_run)
    plain = runs[0].median_round_s
    for r in runs:
        report.add(
            arm=r.name,
            **{
                "start-up s": r.startup_s,
                "round s (median)": r.median_round_s,
                "x plain": ratio(r.median_round_s, plain),
                "x Flower": ratio(r.median_round_s, flower_run.median_round_s)
                if flower_run
                else None,
                "accuracy": r.accuracy,
                "total s": r.total_s,
            },
        )
    report.settings["runs"] = [r.to_dict() for r in runs]
    report.notes.append(
        "x plain / x Flower: median time per round divided by that arm's (lower is faster)"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flower-python", help="a Python with flwr[simulation] installed")
    parser.add_argument("--no-nodes", action="store_true", help="skip the bcfl node arm")
    parser.add_argument("--flower-child", type=Path, help=argparse_hidden())
    parser.add_argument("--launched", type=float, help=argparse_hidden())
    args = parser.parse_args(argv)
    if args.flower_child is not None:
        _flower_child(args.members, args.rounds, args.seed, args.flower_child, args.launched)
        return 0
    members, rounds = args.members, args.rounds
    if args.quick:  # a smoke run: 4 members (shipped 4-member partition), 3 rounds
        members, rounds = min(members, 4), min(rounds, 3)
    report = run(
        members,
        rounds,
        seed=args.seed,
        flower=args.flower_python,
        nodes=not args.no_nodes,
        quiet=args.json,
    )
    emit(report, as_json=args.json)
    return 0


def argparse_hidden() -> str:
    import argparse

    return argparse.SUPPRESS


if __name__ == "__main__":
    raise SystemExit(main())
