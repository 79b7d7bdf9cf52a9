"""Every benchmark, one after the other, each in its own process (what `make bench` runs).

Usage::

    .venv/bin/python bench/run_all.py [--quick] [--only NAME ...] [--keep-going]

Each bench prints its own table with ratios against the baseline it measured in the same run
and leaves its JSON under bench/results/; this prints a summary of what ran, how long it took
and the machine's load before and after (2 shared cores: a high load makes every figure slower,
the ratios less so).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

#: In the order they run: the cheap, node-free ones first.
BENCHES = (
    "join_spam",
    "verify_chain",
    "flower_compare",
    "ledger_overhead",
    "sync_bench",
    "serve_bench",
    "scale",
    "accuracy",
    "poisoning_network",
)


def load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every bench in its quick mode")
    parser.add_argument("--only", nargs="+", choices=BENCHES, help="run only these")
    parser.add_argument(
        "--keep-going", action="store_true", help="run the rest after a bench fails"
    )
    args = parser.parse_args(argv)
    names = args.only or list(BENCHES)
    summary: list[tuple[str, int, float, str, str]] = []
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    for name in names:
        command = [sys.executable, str(BENCH / f"{name}.py")]
        if args.quick:
            command.append("--quick")
        before = load()
        print(f"\n=== {name} ({' '.join(command[1:])}), load {before}", flush=True)
        start = time.perf_counter()
        code = subprocess.run(command, cwd=ROOT, env=env, check=False).returncode
        summary.append((name, code, time.perf_counter() - start, before, load()))
        if code != 0 and not args.keep_going:
            break
    print("\n=== summary")
    for name, code, seconds, before, after in summary:
        state = "ok" if code == 0 else f"FAILED (exit {code})"
        print(f"{name:16s} {state:18s} {seconds:7.1f} s   load {before} -> {after}")
    return 0 if all(code == 0 for _, code, *_ in summary) and len(summary) == len(names) else 1


if __name__ == "__main__":
    raise SystemExit(main())
