"""Soak the consensus simulator: many seeded scenarios over all cores, with latency figures.

    .venv/bin/python bench/consensus_soak.py --scenarios 100000 --workers 2

Prints the scenario counts (by n and number of Byzantine validators), any failing seed with
the command that replays it, and the simulated commit latency (rounds and messages per height)
for n = 4 and n = 7 with and without faults.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import Counter, defaultdict
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.consensus.sim import run_seed

Row = tuple[int, int, bool, bool, str | None, list[int], int, int, int]


def _one(seed: int) -> Row:
    r = run_seed(seed)
    sc = r.scenario
    faulty = bool(sc.byzantine or sc.loss or sc.partition or sc.crashes or sc.missing_pct)
    return (
        seed,
        sc.n,
        faulty,
        r.ok,
        r.violation,
        r.rounds,
        r.protocol_messages,
        r.total_messages,
        len(sc.byzantine),
    )


def _fault_free(seed: int, n: int) -> Row:
    r = run_seed(seed, n=n, faults=False)
    return (seed, n, False, r.ok, r.violation, r.rounds, r.protocol_messages, r.total_messages, 0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenarios", type=int, default=100_000)
    parser.add_argument("--start", type=int, default=0, help="first seed")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    seeds = range(args.start, args.start + args.scenarios)
    began = time.perf_counter()
    with Pool(args.workers) as pool:
        rows = pool.map(_one, seeds, chunksize=50)
        clean = pool.starmap(_fault_free, [(s, n) for n in (4, 7) for s in range(50)])
    elapsed = time.perf_counter() - began
    counts = Counter((row[1], row[8]) for row in rows)
    failures = [row for row in rows if not row[3]]
    print(f"{len(rows)} scenarios in {elapsed:.1f} s ({len(rows) / elapsed:.0f}/s)")
    for (n, f), c in sorted(counts.items()):
        print(f"  n={n} byzantine={f}: {c}")
    print(f"failures: {len(failures)}")
    for row in failures[:20]:
        print(f"  seed {row[0]}: {row[4]}")
        print(f"    replay: BCFL_SIM_SEED={row[0]} .venv/bin/pytest tests/consensus -k replay")
    groups: dict[tuple[int, str], list[Row]] = defaultdict(list)
    for row in [*rows, *clean]:
        if row[3] and row[1] in (4, 7):
            label = "faults" if row[2] else "no faults"
            groups[(row[1], label)].append(row)
    print("simulated commit latency per height (mean, p50, max rounds; mean messages):")
    for (n, label), items in sorted(groups.items()):
        rounds = [r for row in items for r in row[5]]
        heights = sum(len(row[5]) for row in items)
        proto = sum(row[6] for row in items) / heights
        total = sum(row[7] for row in items) / heights
        print(
            f"  n={n} {label:9}: rounds {statistics.mean(rounds):.2f} / "
            f"{statistics.median(rounds):.0f} / {max(rounds)}; messages {proto:.0f} protocol, "
            f"{total:.0f} with retransmissions ({len(items)} scenarios)"
        )
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
