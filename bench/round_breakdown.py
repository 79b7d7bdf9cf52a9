"""Where the seconds of a federated round go: one run through real nodes, read from their logs.

Usage::

    .venv/bin/python bench/round_breakdown.py [--members 4] [--rounds 5] [--keep DIR] [--json]
        [--analyse DIR]   # only read the homes of an earlier --keep run

Runs the digits job of ``bench/common.py`` through ``members`` real ``bcfl node --train``
processes (the nodes' own defaults), keeps their homes, then reads the first node's chain and
every node's log (``HOME/node/node.log``) and reports, per FL round and per height:

* heights per FL round, and what each block carried (open_round, updates, aggregate, empty);
* consensus rounds per height (the round of each commit certificate) and timeouts that fired;
* per height: commit of the previous height -> proposal -> this node's prevote -> its
  precommit (a prevote quorum seen) -> commit (a precommit quorum seen), on the first node;
* per FL round: commit of open_round -> each trainer starts training -> trained -> submitted
  -> update checked by the first validator -> aggregate prepared -> aggregate committed.

Timestamps are the nodes' log times (one machine, one clock). Counts are the robust figures on
a loaded machine; seconds are read together with the load average printed beside them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import DIGITS_MLP, PLAN, BenchConsortium, parse_log  # noqa: E402


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def analyse(root: Path, members: Sequence[str]) -> dict[str, Any]:
    from bcfl_cli.home import Home
    from bcfl_cli.store.ledger import Ledger

    first = members[0]
    ledger = Ledger.open(Home.resolve(root / first))
    try:
        blocks = list(ledger.blocks(1))
    finally:
        ledger.close()
    logs = {name: parse_log(root / name / "node" / "node.log") for name in members}

    # --- chain: what each height carried, and in which consensus round it was decided -------
    heights: list[dict[str, Any]] = []
    fl_round = 0
    heights_per_round: Counter[int] = Counter()
    opens: dict[int, int] = {}  # height -> FL round opened there
    closes: dict[int, int] = {}  # height -> FL round aggregated there
    for block in blocks:
        kinds = Counter(tx.kind.value for tx in block.txs)
        for tx in block.txs:
            if tx.kind.value == "open_round":
                opens[block.height] = int(tx.body["round"])
            elif tx.kind.value == "aggregate":
                closes[block.height] = int(tx.body["round"])
        # a height belongs to the round it works for: the one it closes, else the open one
        fl_round = closes.get(block.height, fl_round)
        heights_per_round[fl_round] += 1
        assert block.commit is not None
        heights.append(
            {
                "height": block.height,
                "fl_round": fl_round,
                "kinds": dict(kinds),
                "consensus_round": block.commit.round,
            }
        )
        fl_round = opens.get(block.height, fl_round)
    # --- the first node's log: per height timings ---------------------------------------------
    events = logs[first]
    commit_at: dict[int, float] = {}
    propose_at: dict[int, float] = {}
    prevote_at: dict[int, float] = {}
    precommit_at: dict[int, float] = {}
    for e in events:
        h = int(e.get("height", -1)) if e.get("height", "").lstrip("-").isdigit() else -1
        if e["msg"] == "committed":
            commit_at.setdefault(h, e["ts"])
        elif e["msg"] == "voted" and e.get("type") == "prevote":
            prevote_at[h] = e["ts"]  # the last round's vote (the deciding one)
        elif e["msg"] == "voted" and e.get("type") == "precommit":
            precommit_at[h] = e["ts"]
    # a proposal's arrival is seen on the proposer's log: "proposing"
    for name in members:
        for e in logs[name]:
            if e["msg"] == "proposing":
                propose_at[int(e["height"])] = e["ts"]  # last (deciding) round's proposal
    steps: dict[str, list[float]] = defaultdict(list)
    for row in heights:
        h = row["height"]
        if h - 1 in commit_at and h in propose_at:
            row["wait_s"] = propose_at[h] - commit_at[h - 1]
            steps["commit(h-1) -> proposal"].append(row["wait_s"])
        if h in propose_at and h in prevote_at:
            steps["proposal -> own prevote"].append(prevote_at[h] - propose_at[h])
        if h in prevote_at and h in precommit_at:
            steps["own prevote -> own precommit"].append(precommit_at[h] - prevote_at[h])
        if h in precommit_at and h in commit_at:
            steps["own precommit -> commit"].append(commit_at[h] - precommit_at[h])
        if h - 1 in commit_at and h in commit_at:
            row["height_s"] = commit_at[h] - commit_at[h - 1]
            key = "empty" if not row["kinds"] else "+".join(sorted(row["kinds"]))
            steps[f"height total ({key})"].append(row["height_s"])
    timeouts: Counter[str] = Counter()
    for name in members:
        for e in logs[name]:
            if e["msg"] == "timeout":
                timeouts[e.get("kind", "?")] += 1
    # --- FL rounds: trainer and preparation --------------------------------------------------
    round_open_commit: dict[int, float] = {}
    round_close_commit: dict[int, float] = {}
    for h, r in opens.items():
        if h in commit_at:
            round_open_commit[r] = commit_at[h]
    for h, r in closes.items():
        if h in commit_at:
            round_close_commit[r] = commit_at[h]
    trainer: dict[str, list[float]] = defaultdict(list)
    pat = re.compile(r"round (\d+): (training|trained|submitted)")
    for name in members:
        for e in logs[name]:
            m = pat.match(e["msg"])
            if m is None:
                continue
            r = int(m.group(1))
            if r not in round_open_commit:
                continue
            trainer[f"open committed -> {m.group(2)}"].append(e["ts"] - round_open_commit[r])
    checked = [e["ts"] for e in events if e["msg"] == "update checked"]
    prepared = [e for e in events if e["msg"] == "aggregate prepared"]
    for e in prepared:
        r = int(e["round"])
        if r in round_open_commit:
            trainer["open committed -> aggregate prepared (node 1)"].append(
                e["ts"] - round_open_commit[r]
            )
    for r, t in round_close_commit.items():
        if r in round_open_commit:
            trainer["open committed -> aggregate committed (node 1)"].append(
                t - round_open_commit[r]
            )
    ends = [t for _, t in sorted(round_close_commit.items())]
    round_s = [b - a for a, b in itertools.pairwise(ends)]
    return {
        "heights": heights,
        "heights_per_round": dict(heights_per_round),
        "consensus_rounds": Counter(row["consensus_round"] + 1 for row in heights),
        "timeouts": dict(timeouts),
        "steps": {k: (len(v), median(v), sum(v)) for k, v in steps.items()},
        "trainer": {k: (len(v), median(v), max(v)) for k, v in trainer.items()},
        "updates_checked_node1": len(checked),
        "round_s": round_s,
    }


def render(result: dict[str, Any], load: tuple[str, str]) -> str:
    lines = [f"load average before / after: {load[0]} / {load[1]}"]
    lines.append(f"round s (aggregate -> aggregate): {[round(x, 2) for x in result['round_s']]}")
    if "cpu_s_per_round_all_nodes" in result:
        cpu = result["cpu_s_per_round_all_nodes"]
        lines.append(f"CPU s per round after the first, all nodes together: {cpu:.2f}")
    lines.append(f"heights per FL round: {result['heights_per_round']}")
    by_round = dict(result["consensus_rounds"])
    lines.append(f"commits by consensus round (1 = first round): {by_round}")
    lines.append(f"timeouts that moved an engine (all nodes): {result['timeouts']}")
    lines.append("per height, first node: step | n | median s | total s")
    for k, (n, med, tot) in sorted(result["steps"].items()):
        lines.append(f"  {k:44s} {n:4d} {med:8.3f} {tot:8.2f}")
    lines.append("per FL round: step | n | median s | max s")
    for k, (n, med, mx) in sorted(result["trainer"].items()):
        lines.append(f"  {k:52s} {n:4d} {med:8.3f} {mx:8.3f}")
    lines.append("blocks: height fl_round consensus_round wait_s height_s kinds")
    for row in result["heights"]:
        lines.append(
            f"  {row['height']:4d} {row['fl_round']:3d} {row['consensus_round']:3d} "
            f"{row.get('wait_s', float('nan')):7.3f} {row.get('height_s', float('nan')):7.3f} "
            f"{row['kinds']}"
        )
    return "\n".join(lines)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def follow(consortium: BenchConsortium, rounds: int, *, timeout: float) -> dict[str, float]:
    """Wait for every round; the nodes' CPU seconds per round after the first (all nodes).

    CPU time does not depend on how many other jobs share the machine, so it is the figure to
    compare between runs on a loaded machine (wall time is not).
    """
    first = consortium.nodes[0]
    marks: dict[int, float] = {}
    deadline = time.monotonic() + timeout
    while len(marks) < rounds:
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out: {len(marks)} of {rounds} rounds closed")
        status = consortium.node_status(first)
        if status is not None:
            rnd = status["round"]
            done = int(rnd["number"]) if rnd["state"] == "closed" else int(rnd["number"]) - 1
            for r in range(1, done + 1):
                if r not in marks:
                    marks[r] = sum(cpu_seconds(n.proc.pid) for n in consortium.nodes)
        time.sleep(0.05)
    later = rounds - 1
    per_round = (marks[rounds] - marks[1]) / later if later else float("nan")
    return {"cpu_s_per_round_all_nodes": per_round}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--keep", type=Path, help="keep the homes here (default: a temp dir)")
    parser.add_argument("--analyse", type=Path, help="only analyse the homes of an earlier run")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--quick", action="store_true", help="3 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds = min(args.rounds, 3)
    load_before = f"{os.getloadavg()[0]:.2f}"
    if args.analyse is not None:
        root = args.analyse
        names = sorted(p.name for p in root.iterdir() if (p / "node").is_dir())
    else:
        root = args.keep or Path(tempfile.mkdtemp(prefix="bcfl-breakdown-"))
        root.mkdir(parents=True, exist_ok=True)
        # votes, timeouts and proposals are logged at debug level; this analysis reads them
        os.environ["BCFL_LOG_LEVEL"] = "debug"
        with BenchConsortium(root, DIGITS_MLP, PLAN, args.members, args.rounds) as consortium:
            consortium.start_founders()
            started = time.perf_counter()
            cpu = follow(consortium, args.rounds, timeout=120.0 + 60.0 * args.rounds)
            print(f"wall {time.perf_counter() - started:.1f} s", file=sys.stderr)
            names = [n.name for n in consortium.nodes]
        print(f"homes kept in {root}", file=sys.stderr)
    result = analyse(root, names)
    if args.analyse is None:
        result.update(cpu)
    load = (load_before, f"{os.getloadavg()[0]:.2f}")
    if args.json:
        print(json.dumps({**result, "load": load}, default=str))
    else:
        print(render(result, load))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
