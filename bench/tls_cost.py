"""What TLS costs a round: the 4-node demo with ``--tls`` and without, interleaved in one run.

Usage::

    .venv/bin/python bench/tls_cost.py [--pairs 3] [--rounds 6] [--json] [--quick]

Each pair runs ``bcfl demo`` (real node processes, digits, fedavg, ``--seed 7``) once in clear
and once with every node serving TLS 1.3 behind certificates pinned in the genesis, in
alternating order (off/on, on/off, ...) so that the shared machine's load falls on both arms
alike. A round's time is the interval between consecutive round closings seen by the demo
(the first round, which includes the nodes' warm-up, is left out); start-up is the demo's
``startup_s``. Reported: medians per arm and the median of the per-pair ratios.
"""

from __future__ import annotations

import itertools
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import Report, base_parser, emit, log  # noqa: E402


def one_run(tls: bool, rounds: int, root: Path) -> dict[str, Any]:
    from bcfl_cli.demo.run import DemoOptions, run_demo

    run = run_demo(DemoOptions(rounds=rounds, seed=7, tls=tls, keep=root))
    data = run.to_dict()
    if not data["ok"]:
        raise SystemExit(f"the demo failed (tls={tls}): see {root}")
    closed = data["timings"]["round_closed_s"]
    intervals = [b - a for a, b in itertools.pairwise(closed)]
    return {
        "round_s": statistics.median(intervals),
        "startup_s": data["timings"]["startup_s"],
        "accuracy": data["final_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = base_parser(__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=3, help="off/on pairs (default 3)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds a run (default 6)")
    args = parser.parse_args(argv)
    pairs, rounds = (1, 3) if args.quick else (args.pairs, args.rounds)
    report = Report(
        "tls_cost",
        "TLS per round: bcfl demo, 4 members, digits MLP, with and without --tls",
        {"pairs": pairs, "rounds": rounds, "seed": 7},
        ["transport", "median round s", "median start-up s", "final accuracy", "x clear"],
    )
    runs: dict[bool, list[dict[str, Any]]] = {False: [], True: []}
    ratios: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bcfl-tls-bench-") as tmp:
        for pair in range(pairs):
            order = (False, True) if pair % 2 == 0 else (True, False)
            got = {}
            for tls in order:
                log(f"pair {pair + 1}/{pairs}: tls {'on' if tls else 'off'}")
                got[tls] = one_run(tls, rounds, Path(tmp) / f"p{pair}-{int(tls)}")
                runs[tls].append(got[tls])
            ratios.append(got[True]["round_s"] / got[False]["round_s"])
    for tls in (False, True):
        report.add(
            **{
                "transport": "TLS 1.3, pinned" if tls else "plain HTTP (loopback)",
                "median round s": statistics.median(r["round_s"] for r in runs[tls]),
                "median start-up s": statistics.median(r["startup_s"] for r in runs[tls]),
                "final accuracy": statistics.median(r["accuracy"] for r in runs[tls]),
                "x clear": statistics.median(ratios) if tls else 1.0,
            }
        )
    report.notes.append(
        "rounds after the first; x clear is the median of the per-pair ratios "
        f"({', '.join(f'{r:.2f}' for r in ratios)})"
    )
    emit(report, as_json=args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
