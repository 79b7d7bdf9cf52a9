"""`bcfl simulate` against plain FedAvg: the same job, N members in one process.

Usage::

    .venv/bin/python bench/simulate.py                       # 10 and 100 members, 5 rounds
    .venv/bin/python bench/simulate.py --members 10 --rounds 20 --json
    .venv/bin/python bench/simulate.py --quick               # 4 members, 2 rounds

The job of bench/common.py (digits MLP, Dirichlet(0.5), SGD lr 0.05, batch 32, one local epoch,
no holdout) three ways, in one run on one machine:

(a) plain in-process FedAvg, no ledger (bench/common.py): the floor;
(b) ``bcfl simulate``: every member keeps its own ledger (``Chain`` on the real SQLite store,
    fsynced), runs the consensus engine with real Ed25519 signatures, checks every update's
    contract and recomputes every aggregate itself;
(c) the same with ``--share-checks``: each deterministic FL check computed once per process.

A round is timed from one aggregate's commit (by the first member) to the next, in wall and in
process CPU seconds: on a shared 2-core machine the CPU figure is the one that does not move with
the other jobs' load. Start-up is launch -> the first member starts training, and launch -> the
first aggregate committed, as in flower_compare.py. Flower's arm lives in flower_compare.py (it
needs .venv-bench); compare with it only inside one run.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import (  # noqa: E402
    DIGITS_MLP,
    PLAN,
    Report,
    base_parser,
    emit,
    load_members,
    load_test,
    log,
    plain_fedavg,
    ratio,
    torch_threads,
)

COLUMNS = [
    "members",
    "arm",
    "start-up s",
    "to 1st aggregate s",
    "round s (median)",
    "round cpu s (median)",
    "x plain",
    "peak RSS MB",
    "cache",
    "accuracy",
]


def simulate_arm(members: int, rounds: int, *, share: bool, seed: int) -> dict[str, object]:
    """``bcfl simulate --json`` in a fresh process, as Flower's arm runs in one: its start-up
    holds the imports (torch among them) like Flower's does."""
    with tempfile.TemporaryDirectory(prefix="bcfl-bench-sim-") as tmp:
        command = [
            sys.executable,
            "-c",
            "from bcfl_cli.cli.app import main; main()",
            "simulate",
            "--members",
            str(members),
            "--rounds",
            str(rounds),
            "--seed",
            str(seed),
            "--out",
            str(Path(tmp) / "homes"),
            "--json",
            *(["--share-checks"] if share else []),
        ]
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        launched = time.perf_counter()
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        total = time.perf_counter() - launched
        if proc.returncode != 0:
            raise SystemExit(
                f"bcfl simulate failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}"
            )
        data = json.loads(proc.stdout)
    rounds_done = data["rounds"]
    later = rounds_done[1:] or rounds_done
    # launch -> the run starts (imports, homes, genesis, data, warm-up): members train at once
    before_run = total - data["run_s"]
    return {
        "ok": data["ok"],
        "head": data["head"],
        "start-up s": before_run,
        "to 1st aggregate s": before_run + rounds_done[0]["wall_s"],
        "round s (median)": statistics.median(r["wall_s"] for r in later),
        "round cpu s (median)": statistics.median(r["cpu_s"] for r in later),
        "peak RSS MB": data["peak_rss_mb"],
        "accuracy": rounds_done[-1]["accuracy"],
        "bytes": data["bytes"],
        "messages": data["messages"],
    }


def flower_arm(python: str, members: int, rounds: int, seed: int, quiet: bool) -> dict[str, object]:
    """Flower 1.42's simulation engine on the same job (flower_compare.py's arm, data cached per
    actor process), in this run; round 1 holds Ray's start and is left out like ours."""
    from bench.flower_compare import run_flower

    flower = run_flower(python, members, rounds, seed, quiet=quiet)
    later = flower.round_s[1:] or flower.round_s
    return {
        "start-up s": flower.extra.get("first_training_s", flower.startup_s),
        "to 1st aggregate s": flower.extra.get("first_aggregate_s"),
        "round s (median)": statistics.median(later),
        "accuracy": flower.accuracy,
        "cache": f"{flower.extra.get('cache_loads')} loads, {flower.extra.get('cache_hits')} hits",
    }


def run(
    members_list: Sequence[int],
    rounds: int,
    *,
    seed: int = 0,
    quiet: bool = False,
    flower_python: str | None = None,
) -> Report:
    report = Report(
        "simulate",
        f"bcfl simulate vs plain FedAvg ({rounds} rounds, digits MLP)",
        {"members": list(members_list), "rounds": rounds, "seed": seed},
        COLUMNS,
    )
    test = load_test()
    for members in members_list:
        log(f"{members} members: plain FedAvg", quiet=quiet)
        data = load_members(members)
        with torch_threads(1):
            # one round first: torch's first optimiser imports its compiler stack (seconds of
            # CPU), which bcfl simulate pays in its start-up; then R rounds, CPU per round
            plain_fedavg(DIGITS_MLP, PLAN, data, None, 1, seed=seed)
            start = time.process_time()
            plain = plain_fedavg(DIGITS_MLP, PLAN, data, test, rounds, seed=seed)
            plain_cpu = (time.process_time() - start) / rounds
        base = plain.median_round_s
        report.add(
            members=members,
            arm="plain FedAvg (no ledger)",
            **{
                "start-up s": plain.startup_s,
                "to 1st aggregate s": plain.startup_s + plain.round_s[0],
                "round s (median)": base,
                "round cpu s (median)": plain_cpu,
                "x plain": 1.0,
                "accuracy": plain.accuracy,
            },
        )
        if flower_python is not None:
            log(f"{members} members: Flower simulation", quiet=quiet)
            row = flower_arm(flower_python, members, rounds, seed, quiet)
            row["x plain"] = ratio(float(row["round s (median)"]), base)  # type: ignore[arg-type]
            report.add(members=members, arm="Flower (Ray simulation)", **row)
        for share in (False, True):
            name = "bcfl simulate" + (" --share-checks" if share else "")
            log(f"{members} members: {name}", quiet=quiet)
            row = simulate_arm(members, rounds, share=share, seed=seed)
            row["x plain"] = ratio(float(row["round s (median)"]), base)  # type: ignore[arg-type]
            report.add(members=members, arm=name, **row)
    report.notes.append(
        "round = one committed aggregate to the next (first member); the first round is left "
        "out of the median (torch warms up); cpu = this process's CPU seconds in that interval"
    )
    report.notes.append(
        "plain FedAvg trains the shipped/bench partitions; bcfl simulate splits digits-train "
        "with fl/split.py (Dirichlet 0.5, seed 7) in-process: same rows, other shards"
    )
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--flower-python",
        help="a Python that imports flwr[simulation] (.venv-bench's): adds Flower's arm",
    )
    args = parser.parse_args(argv)
    members, rounds = ([4], 2) if args.quick else (args.members, args.rounds)
    flower = None
    if args.flower_python:
        from bench.flower_compare import flower_python

        flower = flower_python(args.flower_python)
        if flower is None:
            raise SystemExit(f"{args.flower_python} cannot import flwr.simulation")
    report = run(members, rounds, seed=args.seed, quiet=args.json, flower_python=flower)
    emit(report, as_json=args.json)
    return 0 if all(row.get("ok", True) for row in report.rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
