"""A round's timeline through real nodes, from their own log lines (issue 19's profile).

Usage::

    python bench/large_model.py --params 110M --validators 2 --keep-logs DIR ...
    python bench/large_timeline.py DIR/109996710x4 [--round 1] [--json]

Reads every ``member-NN.log`` of the folder (``--keep-logs`` copies the nodes' logs there) and
prints, for one FL round, each stage's start and end in seconds from the first ``training``
line, over the nodes that log it (first start, last end), and the durations the nodes logged:
training and writing the update (trainers), pushing it to the peers, each finished upload
held by a peer, the contract check of each update on each validator, the aggregate each
validator recomputed, and the commit that closes the round. One machine, one clock.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")
SECONDS = re.compile(r"seconds=([0-9.]+)")
# (stage, pattern of its line); a stage's line marks its end unless it says how long it took
STAGES: list[tuple[str, str]] = [
    ("training", r"round {n}: training$"),
    ("update written", r"round {n}: update written into the blob store in ([0-9.]+) s"),
    ("trained and stored", r"round {n}: trained and stored in ([0-9.]+) s"),
    ("pushed to every peer", r"round {n}: pushed in ([0-9.]+) s"),
    ("blob held by a peer (upload finished)", r"blob uploaded "),
    ("update submitted", r"round {n}: submitted update"),
    ("update checked (contract)", r"update checked .*seconds=([0-9.]+)"),
    ("aggregate recomputed", r"aggregate prepared round={n} .*seconds=([0-9.]+)"),
    ("round closed (commit)", r"committed .*round={n} round_state=closed"),
]


def _time(line: str) -> float | None:
    found = STAMP.match(line)
    if found is None:
        return None
    when = dt.datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return when.replace(tzinfo=dt.UTC).timestamp()


def timeline(folder: Path, round_number: int = 1) -> list[dict[str, Any]]:
    """Per stage: nodes that logged it, first start and last end (s from training), and the
    durations logged (the slowest node's)."""
    seen: dict[str, list[tuple[float, float]]] = {name: [] for name, _ in STAGES}
    patterns = [(name, re.compile(p.format(n=round_number))) for name, p in STAGES]
    for log in sorted(folder.glob("member-*.log")):
        closed = False
        for line in log.read_text(errors="replace").splitlines():
            when = _time(line)
            if when is None:
                continue
            for name, pattern in patterns:
                found = pattern.search(line)
                if found is None or (name.startswith("round closed") and closed):
                    continue
                closed = closed or name.startswith("round closed")
                took = float(found.group(1)) if found.groups() else 0.0
                seen[name].append((when - took, when))
    starts = [s for s, _ in seen["training"]]
    if not starts:
        raise SystemExit(f"no 'round {round_number}: training' line in {folder}")
    zero = min(starts)
    rows = []
    for name, _ in STAGES:
        spans = seen[name]
        if not spans:
            continue
        rows.append(
            {
                "stage": name,
                "lines": len(spans),
                "first start s": round(min(s for s, _ in spans) - zero, 2),
                "last end s": round(max(e for _, e in spans) - zero, 2),
                "longest s": round(max(e - s for s, e in spans), 2),
            }
        )
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--round", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rows = timeline(args.folder, args.round)
    if args.json:
        json.dump(rows, sys.stdout, indent=2)
        print()
        return 0
    columns = list(rows[0])
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(str(row[c]) for c in columns) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
