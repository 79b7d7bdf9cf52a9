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
if str(ROOT) not in sys.path:  # the app itself is imported by bcfl's loader only (bind)
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from bcfl_cli.apps.runner import BoundApp, bind_unpinned  # noqa: E402
from bcfl_cli.fl import attacks  # noqa: E402
from bcfl_cli.fl.aggregation import UpdateInput, aggregate  # noqa: E402
from bcfl_cli.fl.data import Dataset  # noqa: E402
from bcfl_cli.protocol.spec import AggregationSpec, TrainingPlan  # noqa: E402

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


def bind(plan: TrainingPlan = PLAN) -> BoundApp:
    return bind_unpinned(ENTRY_POINT, {}, plan, APP_FOLDER)


def make_split(out: Path, members: int, seed: int, alpha: float = 0.5) -> Split:
    app = bind()  # imports the app through bcfl's loader (checked source), then its data module
    from digits_resnet.data import write_partitions

    paths, test_path = write_partitions(out, members, alpha=alpha, seed=seed)
    return Split([app.load_data(p) for p in paths], app.load_data(test_path))


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
def network_genesis(members: int, rounds: int) -> Any:
    """The consortium of the network part: the app pinned, PLAN, every member's update awaited
    (a round closes on all ``members`` updates, else after 10 minutes), FedAvg, and
    a contract norm bound far above an honest Adam update of this model."""
    from bcfl_cli.apps.project import pin_for, read_project
    from bcfl_cli.demo.launcher import GenesisPlan
    from bcfl_cli.protocol.spec import AppModelSpec, ContractRules

    return GenesisPlan(
        model=AppModelSpec(app=pin_for(read_project(APP_FOLDER))),
        training=PLAN.model_copy(
            update={
                "rounds": rounds,
                "min_updates": members,
                # PLAN names no deadline, so it holds the default 20 blocks: 6 s at the
                # launcher's 0.3 s empty-block pace closed rounds before every member's update
                "deadline_blocks": NETWORK_DEADLINE_BLOCKS,
                "round_deadline_s": 600,
            }
        ),
        contract=ContractRules(max_update_norm=NETWORK_NORM_BOUND, min_samples=10),
        aggregation=AggregationSpec(rule="fedavg"),
        name=f"digits_resnet, {members} members",
        app_folder=APP_FOLDER,
    )


#: A round's deadline in blocks in the network part: 10 min at the launcher's empty-block pace.
NETWORK_DEADLINE_BLOCKS = 2000
#: The contract's norm bound in the network part: far above an honest update (measured 5.4 for
#: the largest member's first round), so the bound never decides a clean run.
NETWORK_NORM_BOUND = 200.0


def network(
    members: int,
    rounds: int,
    seed: int,
    central_epochs: int,
    work: Path,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """``members`` real node processes (bcfl_cli/demo/launcher.py) train the pinned app for
    ``rounds`` rounds on a Dirichlet(0.5) split; then ``bcfl verify-chain --deep`` on every
    home, and centralised training on the same members' data, in the same run."""
    from bcfl_cli.demo.launcher import LocalConsortium, MemberPlan, bcfl_command
    from bcfl_cli.fl.tensors import decode_tensors

    split_dir = work / "data"
    split = make_split(split_dir, members, seed)
    parts = sorted(split_dir.glob("member-*.npz"))
    names = [f"member-{i:02d}" for i in range(1, members + 1)]
    plans = [
        MemberPlan(name, data=part, train_seed=_seed(seed, name))
        for name, part in zip(names, parts, strict=True)
    ]
    started = time.perf_counter()
    closed: list[float] = []
    with LocalConsortium(work / "homes", plans, network_genesis(members, rounds)) as net:
        net.start_all(wait=True, timeout=300)
        log(f"  {members} nodes up [{time.perf_counter() - started:.0f} s]")
        for number in range(1, rounds + 1):
            net.wait_round_closed(number, names[:1], timeout=900)
            closed.append(time.perf_counter() - started)
            log(f"  round {number} closed [{closed[-1]:.0f} s]")
        seconds = time.perf_counter() - started
        homes = {name: net.members[name].home.root for name in names}
    app = bind()
    curve: list[tuple[int, float, float]] = []
    for number, at in enumerate(closed, start=1):
        out = work / f"round-{number}.safetensors"
        subprocess.run(
            [
                *bcfl_command(),
                "model",
                "export",
                "--home",
                str(homes[names[0]]),
                "--round",
                str(number),
                "--out",
                str(out),
                "--no-proof",
            ],
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        state = decode_tensors(out.read_bytes(), max_bytes=1 << 30)
        curve.append((number, accuracy(app, state, split.test), at))
        log(f"  round {number}: test accuracy {curve[-1][1]:.4f}")
    verified: dict[str, bool] = {}
    for name, home in homes.items():
        done = subprocess.run(
            [*bcfl_command(), "verify-chain", "--deep", "--home", str(home)],
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        verified[name] = done.returncode == 0
        verdict = "passed" if verified[name] else f"FAILED: {done.stderr.strip()[-300:]}"
        log(f"  {name}: bcfl verify-chain --deep {verdict}")
    t0 = time.perf_counter()
    central = centralised(split.members, split.test, central_epochs, seed)
    log(
        f"  centralised ({central_epochs} epochs, pooled): {central:.4f} "
        f"[{time.perf_counter() - t0:.0f} s]"
    )
    return {
        "members": members,
        "rounds": rounds,
        "rounds_closed": len(curve),
        "seconds": seconds,
        "curve": curve,
        "accuracy": curve[-1][1] if curve else None,
        "centralised": central,
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
            net = network(
                args.members, args.rounds, args.seed, args.central_epochs, Path(tmp), print
            )
        acc, central = net["accuracy"], net["centralised"]
        gap = 100 * ((acc if acc is not None else 0.0) - central)
        verified = bool(net["verified"]) and all(net["verified"].values())
        ok = gap >= -3.0 and verified and net["rounds_closed"] >= args.rounds
        print(
            f"network: {args.members} nodes, {net['rounds_closed']} rounds in "
            f"{net['seconds']:.0f} s, accuracy {acc} vs centralised {central:.4f} "
            f"({gap:+.1f} points), verify-chain --deep on every node: {verified} -> "
            f"{'PASS' if ok else 'FAIL'}"
        )
        out["network"] = {**net, "gap_points": gap, "pass": ok}
    if args.part in ("all", "matrix"):
        matrix = run_matrix(args, print)
        print(render_matrix(matrix, args.rules))
        out["matrix"] = matrix
    if args.json:
        args.json.write_text(json.dumps(out, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
