"""Scale: round time and node memory as members grow, and the largest model a round handles.

Usage::

    .venv/bin/python bench/scale.py [--members 4 10 20] [--rounds 3]
        [--widths 256 512 1024 2048 4096] [--round-bound 120] [--memory-bound-mb 6144] [--json]

Part 1: N = 4, 10, 20 real ``bcfl node --train`` processes on this one machine (digits MLP,
Dirichlet(0.5) partitions, one local epoch a round; every member validates, so a round commits
N updates, N verdicts and an aggregate recomputed by all N). Each row gives the median round
time, its ratio to plain in-process FedAvg with the same N members (measured just before), and
the nodes' resident memory at its peak (sampled every 0.25 s).

Part 2: the largest model: 4 nodes run one round of an MLP with two hidden layers of width W,
W stepping up, until a round takes longer than ``--round-bound`` seconds or the nodes together
hold more than ``--memory-bound-mb`` (the run is stopped there, not left to exhaust a shared
machine). The last width that passed is the answer for this machine.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bcfl_cli.fl.models import parameter_count  # noqa: E402
from bcfl_cli.protocol.spec import ModelSpec  # noqa: E402
from bench.common import (  # noqa: E402
    DIGITS_MLP,
    FEATURES,
    PLAN,
    MemoryBoundExceeded,
    Report,
    RoundTimeout,
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

MiB = 2**20


def mlp(width: int) -> ModelSpec:
    return ModelSpec(
        architecture="mlp", input_shape=[FEATURES], num_classes=10, hidden=[width, width], seed=0
    )


def members_part(report: Report, members: Sequence[int], rounds: int, quiet: bool) -> None:
    test = load_test()
    for n in members:
        log(f"{n} members: plain FedAvg ...", quiet=quiet)
        with torch_threads(1):
            plain = plain_fedavg(DIGITS_MLP, PLAN, load_members(n), test, rounds)
        log(f"{n} members: {n} nodes ...", quiet=quiet)
        try:
            nodes = run_nodes(
                DIGITS_MLP,
                PLAN,
                n,
                rounds,
                test=test,
                quiet=quiet,
                timeout=60.0 + 30.0 * n + 120.0 * rounds,
            )
        except (RoundTimeout, RuntimeError) as exc:  # no round at all: say so, go on
            first = str(exc).splitlines()[0][:80]
            report.add(part="members", members=n, params=parameter_count(DIGITS_MLP), result=first)
            continue
        peak = nodes.extra["peak_rss_bytes"] or [0]
        report.add(
            part="members",
            members=n,
            params=parameter_count(DIGITS_MLP),
            **{
                "round s": nodes.median_round_s,
                "x plain": ratio(nodes.median_round_s, plain.median_round_s),
                "start-up s": nodes.startup_s,
                "node RSS MB (max)": max(peak) / MiB,
                "all nodes RSS MB": nodes.extra["peak_total_rss_bytes"] / MiB,
                "result": f"acc {nodes.accuracy:.3f} (plain {plain.accuracy:.3f})",
            },
        )


def model_part(
    report: Report,
    widths: Sequence[int],
    *,
    round_bound: float,
    memory_bound: int,
    quiet: bool,
) -> None:
    largest: ModelSpec | None = None
    test = load_test()
    for width in widths:
        spec = mlp(width)
        params = parameter_count(spec)
        log(f"width {width} ({params:,} parameters): 4 nodes, 1 round ...", quiet=quiet)
        blob_limit = max(256 * MiB, 8 * params + MiB)
        row = {"part": "model", "members": 4, "params": params}
        try:
            nodes = run_nodes(
                spec,
                PLAN,
                4,
                1,
                test=test,
                quiet=quiet,
                timeout=120.0 + round_bound,
                memory_limit=memory_bound,
                max_blob_bytes=blob_limit,
                partial=False,
            )
        except (RoundTimeout, MemoryBoundExceeded, RuntimeError) as exc:
            report.add(**row, result=f"FAILED: {str(exc).splitlines()[0][:80]}")
            break
        seconds = nodes.median_round_s
        peak = nodes.extra["peak_rss_bytes"] or [0]
        within = seconds <= round_bound
        report.add(
            **row,
            **{
                "round s": seconds,
                "start-up s": nodes.startup_s,
                "node RSS MB (max)": max(peak) / MiB,
                "all nodes RSS MB": nodes.extra["peak_total_rss_bytes"] / MiB,
                "result": "ok" if within else f"over the {round_bound:g} s bound",
            },
        )
        if not within:
            break
        largest = spec
    if largest is not None:
        report.notes.append(
            f"largest model a round handled: MLP {largest.hidden} "
            f"({parameter_count(largest):,} parameters, "
            f"{4 * parameter_count(largest) / MiB:.0f} MiB an update)"
        )


def run(
    members: Sequence[int],
    rounds: int,
    widths: Sequence[int],
    *,
    round_bound: float,
    memory_bound_mb: int,
    quiet: bool = False,
) -> Report:
    report = Report(
        bench="scale",
        title="Scale: members 4 -> 10 -> 20 on one machine, and the largest model",
        settings={
            "members": list(members),
            "rounds": rounds,
            "widths": list(widths),
            "round_bound_s": round_bound,
            "memory_bound_mb": memory_bound_mb,
        },
        columns=[
            "part",
            "members",
            "params",
            "round s",
            "x plain",
            "start-up s",
            "node RSS MB (max)",
            "all nodes RSS MB",
            "result",
        ],
    )
    if members:
        members_part(report, members, rounds, quiet)
    if widths:
        model_part(
            report, widths, round_bound=round_bound, memory_bound=memory_bound_mb * MiB, quiet=quiet
        )
    report.notes += [
        "x plain = median node round time / plain in-process FedAvg with the same members",
        "all N nodes share this machine's cores: per-node work a deployment spreads over N "
        "machines is serialised here",
    ]
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = base_parser(__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, nargs="*", default=[4, 10, 20])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--widths", type=int, nargs="*", default=[256, 512, 1024, 2048, 4096])
    parser.add_argument("--round-bound", type=float, default=120.0)
    parser.add_argument("--memory-bound-mb", type=int, default=6144)
    args = parser.parse_args(argv)
    members, rounds, widths = args.members, args.rounds, args.widths
    if args.quick:
        members, rounds, widths = [4], min(rounds, 2), [1024]
    report = run(
        members,
        rounds,
        widths,
        round_bound=args.round_bound,
        memory_bound_mb=args.memory_bound_mb,
        quiet=args.json,
    )
    emit(report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
