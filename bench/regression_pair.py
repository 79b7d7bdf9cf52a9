"""Run one bench command on two source trees, alternating, and print the medians of each tree.

Usage::

    python bench/regression_pair.py --before /tmp/before-abc123 --after . --pairs 3 \\
        --field "round s (median)" -- bench/flower_compare.py --no-deployment --json

Why alternate: on a shared, loaded machine the load drifts over minutes, so "all before, then all
after" measures the drift. Each pair runs before then after (the order flips every other pair),
each run with ``cwd`` and ``PYTHONPATH`` set to its tree, so that the bench script and the
``bcfl`` code it starts are that tree's. The command must print one JSON document (a bench's
``--json``); its report rows are matched by their first column (``arm``), and for every arm and
every ``--field`` the script prints each tree's per-run values and median. The load average at
each start is recorded beside.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def run_once(tree: Path, command: Sequence[str], timeout: float) -> dict[str, Any]:
    """One run of ``command`` inside ``tree``: its JSON report, load at start, wall seconds."""
    env = dict(os.environ, PYTHONPATH=str(tree))
    load = os.getloadavg()[0]
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, *command],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    wall = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{tree}: exit {done.returncode}\n{done.stderr[-4000:]}")
    return {"report": json.loads(done.stdout), "load_at_start": load, "wall_s": wall}


def arm_key(name: str) -> str:
    """An arm's name without a run-dependent suffix ("(3 of 20 rounds in time)")."""
    return name.split(" (", 1)[0] if "rounds in time" in name else name


def summarise(runs: dict[str, list[dict[str, Any]]], fields: Sequence[str]) -> dict[str, Any]:
    """Per tree, per arm, per field: the values of every run and their median."""
    out: dict[str, Any] = {}
    for tree, results in runs.items():
        arms: dict[str, dict[str, list[Any]]] = {}
        for result in results:
            for row in result["report"]["rows"]:
                # a row is named by its first column: ``arm`` in most benches, ``params`` in
                # large_model.py (a KeyError here once lost four 110M runs)
                name = row["arm"] if "arm" in row else next(iter(row.values()), "")
                arm = arms.setdefault(arm_key(str(name)), {f: [] for f in fields})
                for field in fields:
                    arm[field].append(row.get(field))
        out[tree] = {
            "loads_at_start": [round(r["load_at_start"], 2) for r in results],
            "wall_s": [round(r["wall_s"], 1) for r in results],
            "arms": {
                name: {
                    field: {
                        "values": values,
                        "median": statistics.median(v for v in values if v is not None)
                        if any(v is not None for v in values)
                        else None,
                    }
                    for field, values in per_field.items()
                }
                for name, per_field in arms.items()
            },
        }
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the older source tree")
    parser.add_argument("--after", type=Path, required=True, help="the newer source tree")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--field", action="append", default=[], help="a report column (repeat)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per run")
    parser.add_argument(
        "--first", choices=["before", "after"], default="before", help="which runs first in pair 1"
    )
    parser.add_argument("--out", type=Path, help="also write the raw runs and summary here")
    parser.add_argument("command", nargs="+", help="script and arguments, after --")
    args = parser.parse_args(argv)
    fields = args.field or ["round s (median)"]
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    for pair in range(args.pairs):
        other = "after" if args.first == "before" else "before"
        order = [args.first, other] if pair % 2 == 0 else [other, args.first]
        for which in order:
            print(f"pair {pair + 1}/{args.pairs}: {which} ...", file=sys.stderr, flush=True)
            runs[which].append(run_once(trees[which], args.command, args.timeout))
            if args.out is not None:  # every run kept as it ends, whatever happens next
                args.out.write_text(json.dumps({"runs": runs}, indent=2) + "\n")
    summary = summarise(runs, fields)
    document = {
        "trees": {k: str(v) for k, v in trees.items()},
        "command": args.command,
        "pairs": args.pairs,
        "summary": summary,
    }
    if args.out is not None:
        args.out.write_text(json.dumps({**document, "runs": runs}, indent=2) + "\n")
    print(json.dumps(document, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
