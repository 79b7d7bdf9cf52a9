"""Example 1 (examples/apps/digits_resnet) end to end: federated against centralised, and its
poisoning matrix.

Usage::

    .venv/bin/python bench/app_accuracy.py                 # everything (network + matrix)
    .venv/bin/python bench/app_accuracy.py --part network  # 4 real nodes, >= 10 rounds
    .venv/bin/python bench/app_accuracy.py --part matrix   # clean / scaling / sign flip, 3 of 10

``network``: a 4-member consortium pinning the app (``bcfl_cli/demo/launcher.py``: real node
processes on 127.0.0.1) trains for ``--rounds`` rounds on a Dirichlet(0.5) split of
scikit-learn's digits; then every node's ``bcfl verify-chain --deep`` must pass, and the final
global model's test accuracy is compared with centralised training of the same model on the
pooled members' data, measured in the same run (target: within 3 points).

``matrix``: the same app in-process (``BoundApp.train_round`` and ``fl.aggregation.aggregate``,
the code a node runs, no ledger) with 10 members, for each rule: clean, ``scaling`` and
``sign_flip`` at 3 of 10 members (the attacks and strengths of bench/accuracy.py). The rules
read tensors only, never the app, so the matrix is bench/accuracy.py's with another model.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
APP_FOLDER = ROOT / "examples" / "apps" / "digits_resnet"
for extra in (ROOT, APP_FOLDER):
    if str(extra) not in sys.path:
        sys.path.insert(0, str(extra))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bcfl_cli.apps.runner import BoundApp, bind_unpinned  # noqa: E402
from bcfl_cli.fl import attacks  # noqa: E402
from bcfl_cli.fl.aggregation import UpdateInput, aggregate  # noqa: E402
from bcfl_cli.fl.data import Dataset  # noqa: E402
from bcfl_cli.fl.spec import AggregationSpec, TrainingPlan  # noqa: E402

ENTRY_POINT = "digits_resnet:app"
#: The plan of both parts: Adam, one local epoch of batches of 32, no holdout inside a round.
PLAN = TrainingPlan(optimizer="adam", lr=0.001, batch_size=32, local_epochs=1, holdout_fraction=0.0)
#: The matrix's rules, as bench/accuracy.py fixes them for up to 30% attackers.
RULES: dict[str, AggregationSpec] = {
    "fedavg": AggregationSpec(rule="fedavg"),
    "clipped": AggregationSpec(rule="clipped", clip_norm=1.0),
    "median": AggregationSpec(rule="median"),
    "trimmed": AggregationSpec(rule="trimmed", trim_beta=0.3),
    "krum": AggregationSpec(rule="krum", krum_f=3, krum_m=7),
}
ATTACKS = ("none", "scaling", "sign_flip")
SIGN_FLIP_K = 4.0
SCALING_FACTOR = 10.0


@dataclass(frozen=True)
class Split:
    members: list[Dataset]
    test: Dataset
    paths: list[Path]
    test_path: Path


def bind(plan: TrainingPlan = PLAN) -> BoundApp:
    return bind_unpinned(ENTRY_POINT, {}, plan, APP_FOLDER)


def make_split(out: Path, members: int, seed: int, alpha: float = 0.5) -> Split:
    from digits_resnet.data import write_partitions

    paths, test_path = write_partitions(out, members, alpha=alpha, seed=seed)
    app = bind()
    return Split([app.load_data(p) for p in paths], app.load_data(test_path), paths, test_path)


def pooled(members: Sequence[Dataset]) -> Dataset:
    return Dataset(torch.cat([m.features for m in members]), torch.cat([m.labels for m in members]))


def accuracy(app: BoundApp, state: dict[str, torch.Tensor], test: Dataset) -> float:
    return app.evaluate(state, test)["accuracy"]


def centralised(members: Sequence[Dataset], test: Dataset, epochs: int, seed: int) -> float:
    """The same model trained on the pooled data for ``epochs`` epochs."""
    app = bind(PLAN.model_copy(update={"local_epochs": epochs}))
    start = app.initial_state()
    result = app.train_round(start, pooled(members), seed=seed)
    return accuracy(app, {k: start[k] + result.delta[k] for k in start}, test)


def _seed(*parts: object) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:4], "big")


def federated(
    members: Sequence[Dataset],
    test: Dataset,
    *,
    rounds: int,
    rule: str = "fedavg",
    attack: str = "none",
    bad: frozenset[int] = frozenset(),
    seed: int = 0,
) -> float:
    """Final test accuracy of an in-process consortium (``bad`` members run ``attack``)."""
    app = bind()
    state = app.initial_state()
    initial = state
    for r in range(rounds):
        deltas = {
            i: app.train_round(state, data, seed=_seed(seed, r, i)).delta
            for i, data in enumerate(members)
        }
        for i in bad:
            if attack == "scaling":
                deltas[i] = attacks.scaling(deltas[i], SCALING_FACTOR)
            elif attack == "sign_flip":
                deltas[i] = attacks.sign_flip(deltas[i], SIGN_FLIP_K)
        updates = [
            UpdateInput(hashlib.sha256(f"{r}/{i}".encode()).hexdigest(), deltas[i], len(members[i]))
            for i in sorted(deltas)
        ]
        state = dict(aggregate(RULES[rule], state, updates, initial_state=initial).new_state)
    return accuracy(app, state, test)


# --- the network part ---------------------------------------------------------------------
def network(split: Split, rounds: int, work: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """4 (or len(split.members)) real nodes train the pinned app; verify-chain --deep on all."""
    from bcfl_cli.apps.loader import locate_source
    from bcfl_cli.apps.manifest import read_manifest
    from bcfl_cli.demo.launcher import GenesisPlan, LocalConsortium
    from bcfl_cli.protocol.encoding import canonical_json  # noqa: F401  (import check only)

    source = locate_source(ENTRY_POINT, APP_FOLDER)
    manifest = read_manifest(source)
    app = bind()
    pin = {
        "entry_point": ENTRY_POINT,
        "manifest": manifest.hash,
        "files": manifest.files,
        "initial_model": app.initial_model_hash(),
        "config": {},
    }
    names = [f"member-{i:02d}" for i in range(1, len(split.members) + 1)]
    genesis = GenesisPlan(
        model={"app": pin},
        training={
            **{k: v for k, v in PLAN.model_dump().items() if k in ("optimizer", "batch_size")},
            "lr": PLAN.lr,
            "local_epochs": PLAN.local_epochs,
            "holdout_fraction": PLAN.holdout_fraction,
            "rounds": rounds,
            "min_updates": len(names),
            "round_deadline_s": 600,
        },
    )
    started = time.perf_counter()
    with LocalConsortium(work, names, genesis, env={"PYTHONPATH": str(APP_FOLDER)}) as net:
        for name, path in zip(names, split.paths, strict=True):
            net.start(name, train=path)
        for name in names:
            net.wait_ready(name, timeout=300)
        net.wait_round_closed(names[0], rounds, timeout=rounds * 600)
        seconds = time.perf_counter() - started
        status = net.status(names[0])
        final_model = status["round"]["model"]
        state = net.model(names[0], final_model)
        verified = {}
        for name in names:
            done = net.run_cli("verify-chain", "--deep", "--home", str(net.home(name)), timeout=900)
            verified[name] = done.returncode == 0
            log(f"  {name}: verify-chain --deep {'passed' if verified[name] else 'FAILED'}")
    return {
        "rounds": rounds,
        "seconds": seconds,
        "final_model": final_model,
        "accuracy": accuracy(app, state, split.test),
        "verified": verified,
    }


# --- reporting ----------------------------------------------------------------------------
def machine_line() -> str:
    load = os.getloadavg()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    loads = "/".join(f"{x:.1f}" for x in load)
    return f"{now}, commit {commit}, load {loads}, {os.cpu_count()} cores"


def run_matrix(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bcfl-app-matrix-") as tmp:
        split = make_split(Path(tmp), 10, args.seed)
    t0 = time.perf_counter()
    central = centralised(split.members, split.test, args.central_epochs, args.seed)
    log(
        f"centralised ({args.central_epochs} epochs, pooled): {central:.4f} "
        f"[{time.perf_counter() - t0:.0f} s]"
    )
    bad = frozenset(int(i) for i in np.random.default_rng(args.seed).permutation(10)[:3])
    rows = []
    for attack in args.attacks:
        for rule in args.rules:
            t = time.perf_counter()
            acc = federated(
                split.members,
                split.test,
                rounds=args.matrix_rounds,
                rule=rule,
                attack=attack,
                bad=bad if attack != "none" else frozenset(),
                seed=args.seed,
            )
            rows.append({"rule": rule, "attack": attack, "accuracy": acc})
            log(f"  {rule:8s} {attack:9s} {acc:.4f} [{time.perf_counter() - t:.0f} s]")
    return {"centralised": central, "rows": rows, "rounds": args.matrix_rounds, "bad": sorted(bad)}


def render_matrix(result: dict[str, Any], rules: Sequence[str]) -> str:
    central = result["centralised"]
    lines = [
        f"centralised: {central:.4f}; {result['rounds']} rounds, 10 members, attackers "
        f"{result['bad']}",
        "",
        "| attack (3 of 10) | " + " | ".join(rules) + " |",
        "|---|" + "---|" * len(rules),
    ]
    by = {(r["attack"], r["rule"]): r["accuracy"] for r in result["rows"]}
    for attack in dict.fromkeys(r["attack"] for r in result["rows"]):
        cells = " | ".join(
            f"{by[(attack, rule)]:.3f}" if (attack, rule) in by else "-" for rule in rules
        )
        lines.append(f"| {attack} | {cells} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["all", "network", "matrix"], default="all")
    parser.add_argument("--rounds", type=int, default=10, help="network rounds (>= 10)")
    parser.add_argument("--members", type=int, default=4, help="network members")
    parser.add_argument("--matrix-rounds", type=int, default=10)
    parser.add_argument("--central-epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    print(machine_line())
    out: dict[str, Any] = {"machine": machine_line()}
    if args.part in ("all", "network"):
        with tempfile.TemporaryDirectory(prefix="bcfl-app-net-") as tmp:
            split = make_split(Path(tmp) / "data", args.members, args.seed)
            t0 = time.perf_counter()
            central = centralised(split.members, split.test, args.central_epochs, args.seed)
            print(
                f"centralised ({args.central_epochs} epochs, pooled): {central:.4f} "
                f"[{time.perf_counter() - t0:.0f} s]"
            )
            net = network(split, args.rounds, Path(tmp) / "net", print)
        gap = 100 * (net["accuracy"] - central)
        ok = gap >= -3.0 and all(net["verified"].values())
        print(
            f"network: {args.members} nodes, {net['rounds']} rounds in {net['seconds']:.0f} s, "
            f"accuracy {net['accuracy']:.4f} vs centralised {central:.4f} ({gap:+.1f} points), "
            f"verify-chain --deep on every node: {all(net['verified'].values())} -> "
            f"{'PASS' if ok else 'FAIL'}"
        )
        out["network"] = {**net, "centralised": central, "gap_points": gap, "pass": ok}
    if args.part in ("all", "matrix"):
        matrix = run_matrix(args, print)
        print(render_matrix(matrix, args.rules))
        out["matrix"] = matrix
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
