"""Ledger overhead: R rounds through real nodes vs the same training as plain in-process FedAvg.

Usage::

    .venv/bin/python bench/ledger_overhead.py [--rounds 5] [--members 4 10] [--models digits 1m]
        [--json]

For each consortium size (4 and 10 members) and model (the digits MLP, 4,810 parameters, and a
1.13M-parameter MLP), the same job runs twice in the same session: as plain FedAvg in one
process (bench/common.py: ``train_local`` + ``aggregate``, no ledger, signatures, blob store or
HTTP), and through one real ``bcfl node --train`` process per member on loopback (BFT consensus,
signed transactions, blob upload/download, contract checks and the aggregate recomputed by every
validator, everything on disk with fsync). The ratio of the median round times is the price of
running as a consortium. On one machine every node trains, checks and aggregates on the same
two cores, so the node figure includes N x the verification work a real deployment spreads over
N machines.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bcfl_cli.fl.models import parameter_count  # noqa: E402
from bench.common import (  # noqa: E402
    DIGITS_MLP,
    MLP_1M,
    PLAN,
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

MODELS = {"digits": DIGITS_MLP, "1m": MLP_1M}


def run(
    rounds: int, members: Sequence[int], models: Sequence[str], *, quiet: bool = False
) -> Report:
    report = Report(
        bench="ledger_overhead",
        title=f"Ledger overhead: {rounds} rounds through real nodes vs plain in-process FedAvg",
        settings={"rounds": rounds, "members": list(members), "models": list(models)},
        columns=[
            "members",
            "model",
            "params",
            "plain round s",
            "nodes round s",
            "x plain",
            "nodes start-up s",
            "plain acc",
            "nodes acc",
            "node RSS MB",
        ],
    )
    test = load_test()
    for n in members:
        data = load_members(n)
        for name in models:
            spec = MODELS[name]
            log(f"{n} members, {name}: plain FedAvg ...", quiet=quiet)
            with torch_threads(1):
                plain = plain_fedavg(spec, PLAN, data, test, rounds)
            log(f"{n} members, {name}: {n} nodes ...", quiet=quiet)
            nodes = run_nodes(spec, PLAN, n, rounds, test=test, quiet=quiet)
            rss = nodes.extra.get("rss_bytes", [])
            report.add(
                members=n,
                model=name,
                params=parameter_count(spec),
                **{
                    "plain round s": plain.median_round_s,
                    "nodes round s": nodes.median_round_s,
                    "x plain": ratio(nodes.median_round_s, plain.median_round_s),
                    "nodes start-up s": nodes.startup_s,
                    "plain acc": plain.accuracy,
                    "nodes acc": nodes.accuracy,
                    "node RSS MB": max(rss) / 2**20 if rss else None,
                },
            )
            report.settings.setdefault("runs", []).append(
                {"members": n, "model": name, "plain": plain.to_dict(), "nodes": nodes.to_dict()}
            )
    report.notes += [
        "x plain = median node round time / median plain round time (same job, same session)",
        "nodes: round 1 opens after start-up; a round ends when its aggregate is committed",
        "node accuracy differs a little from plain: a node's trainer draws its own seed",
    ]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--members", type=int, nargs="+", default=[4, 10])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    rounds, members, models = args.rounds, args.members, args.models
    if args.quick:
        rounds, members, models = min(rounds, 3), [4], ["digits"]
    report = run(rounds, members, models, quiet=args.json)
    emit(report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
