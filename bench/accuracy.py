"""Accuracy of each aggregation rule under attack: a 10-member digits consortium, in-process.

Usage::

    .venv/bin/python bench/accuracy.py [--rounds R] [--local-epochs E] [--quick] [--json FILE]

Ten members hold the shipped Dirichlet(0.5) partitions of the UCI digits training rows
(``sample_data/partitions/digits/10-dir0.5``); every run starts from the genesis model of the
same spec, trains with ``bcfl_cli.fl.training.train_local`` and aggregates with
``bcfl_cli.fl.aggregation.aggregate`` (the exact code a peer runs), and is scored on the common
held-out test set (``sample_data/digits-test.csv``). Centralised training of the same model on
the pooled training rows is measured in the same run, as is clean FedAvg: the table gives each
result's ratio to both. The contract (norm bound) is deliberately off here, so the rules are
measured on their own.

Attackers are a fixed, seeded choice of members (the 10% set inside the 30% set). See
bench/README.md for the attack parameters and the measured table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bcfl_cli.fl import attacks  # noqa: E402
from bcfl_cli.fl.aggregation import UpdateInput, aggregate  # noqa: E402
from bcfl_cli.fl.data import Dataset, load_csv  # noqa: E402
from bcfl_cli.fl.models import initial_state  # noqa: E402
from bcfl_cli.fl.training import evaluate, train_local  # noqa: E402
from bcfl_cli.protocol.spec import AggregationSpec, ModelSpec, TrainingPlan  # noqa: E402

DATA = ROOT / "sample_data"
PARTS = DATA / "partitions" / "digits" / "10-dir0.5"
MEMBERS = 10
CLASSES = 10
SPEC = ModelSpec(architecture="mlp", input_shape=[64], num_classes=CLASSES, hidden=[64], seed=0)

#: The rules as a genesis would fix them for a consortium that expects up to 30% attackers.
RULES: dict[str, AggregationSpec] = {
    "fedavg": AggregationSpec(rule="fedavg"),
    "clipped": AggregationSpec(rule="clipped", clip_norm=1.0),
    "median": AggregationSpec(rule="median"),
    "trimmed": AggregationSpec(rule="trimmed", trim_beta=0.3),
    "krum": AggregationSpec(rule="krum", krum_f=3, krum_m=7),
    "cosine": AggregationSpec(rule="cosine"),
    "cosine_trajectory": AggregationSpec(rule="cosine_trajectory"),
}
ATTACKS = (
    "label_flip",
    "sign_flip",
    "scaling",
    "gaussian",
    "alie",
    "ipm",
    "free_rider",
)
#: Attack strengths (documented in bench/README.md).
SIGN_FLIP_K = 4.0
SCALING_FACTOR = 10.0
GAUSSIAN_STD = 1.0
IPM_EPS = 0.5
FRACTIONS = (0.1, 0.3)


@dataclass(frozen=True)
class Settings:
    rounds: int
    local_epochs: int
    lr: float
    batch_size: int
    central_epochs: int
    seed: int


@dataclass(frozen=True)
class Row:
    rule: str
    attack: str
    attackers: int
    accuracy: float
    seconds: float


def load_members() -> list[Dataset]:
    return [
        load_csv(PARTS / f"member-{i:02d}.csv", num_classes=CLASSES, num_features=64)
        for i in range(1, MEMBERS + 1)
    ]


def attacker_order(seed: int) -> list[int]:
    """Members in the order they turn malicious: the first k are the attackers."""
    return [int(i) for i in np.random.default_rng(seed).permutation(MEMBERS)]


def _plan(s: Settings, epochs: int) -> TrainingPlan:
    return TrainingPlan(lr=s.lr, batch_size=s.batch_size, local_epochs=epochs, holdout_fraction=0.0)


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:4], "big")


def centralised(s: Settings, members: Sequence[Dataset], test: Dataset) -> float:
    pooled = Dataset(
        torch.cat([m.features for m in members]), torch.cat([m.labels for m in members])
    )
    start = initial_state(SPEC)
    result = train_local(SPEC, _plan(s, s.central_epochs), start, pooled, seed=s.seed)
    final = {k: start[k] + result.delta[k] for k in start}
    return evaluate(SPEC, final, test)[1]


def run_fl(
    s: Settings,
    rule: str,
    attack: str,
    n_attackers: int,
    members: Sequence[Dataset],
    test: Dataset,
) -> float:
    """Final test accuracy of one consortium run."""
    plan = _plan(s, s.local_epochs)
    bad = set(attacker_order(s.seed)[:n_attackers])
    flipped = {
        i: Dataset(members[i].features, attacks.label_flip(members[i].labels, CLASSES)) for i in bad
    }
    state = initial_state(SPEC)
    initial = state
    previous = attacks.free_rider_zero(state)
    for r in range(s.rounds):
        deltas: dict[int, dict[str, torch.Tensor]] = {}
        for i, data in enumerate(members):
            if i in bad and attack in ("alie", "ipm", "free_rider", "gaussian"):
                continue  # these attackers do not train
            local = flipped[i] if i in bad and attack == "label_flip" else data
            deltas[i] = train_local(SPEC, plan, state, local, seed=_seed(s.seed, r, i)).delta
        honest = [deltas[i] for i in sorted(deltas) if i not in bad]
        forged = _forge(attack, bad, deltas, honest, previous, r, s.seed)
        deltas.update(forged)
        updates = [
            UpdateInput(hashlib.sha256(f"{r}/{i}".encode()).hexdigest(), deltas[i], len(members[i]))
            for i in sorted(deltas)
        ]
        result = aggregate(RULES[rule], state, updates, initial_state=initial)
        previous = {k: result.new_state[k] - state[k] for k in state}
        state = result.new_state
    return evaluate(SPEC, state, test)[1]


def _forge(
    attack: str,
    bad: set[int],
    deltas: dict[int, dict[str, torch.Tensor]],
    honest: list[dict[str, torch.Tensor]],
    previous: dict[str, torch.Tensor],
    r: int,
    seed: int,
) -> dict[int, dict[str, torch.Tensor]]:
    if not bad:
        return {}
    forged: dict[int, dict[str, torch.Tensor]] = {}
    for i in sorted(bad):
        if attack == "sign_flip":
            forged[i] = attacks.sign_flip(deltas[i], SIGN_FLIP_K)
        elif attack == "scaling":
            forged[i] = attacks.scaling(deltas[i], SCALING_FACTOR)
        elif attack == "gaussian":
            forged[i] = attacks.gaussian(previous, std=GAUSSIAN_STD, seed=_seed(seed, r, i, "g"))
        elif attack == "alie":
            forged[i] = attacks.alie(honest, n=MEMBERS, f=len(bad))
        elif attack == "ipm":
            forged[i] = attacks.ipm(honest, eps=IPM_EPS)
        elif attack == "free_rider":
            forged[i] = attacks.free_rider_zero(previous)
        elif attack == "label_flip":
            forged[i] = deltas[i]
        else:
            raise ValueError(f"unknown attack {attack!r}")
    return forged


def run(
    s: Settings,
    rules: Sequence[str],
    attack_names: Sequence[str],
    fractions: Sequence[float],
    *,
    log: Callable[[str], None] = print,
) -> tuple[float, list[Row]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared machine
    try:
        return _run(s, rules, attack_names, fractions, log)
    finally:
        torch.set_num_threads(threads)


def _run(
    s: Settings,
    rules: Sequence[str],
    attack_names: Sequence[str],
    fractions: Sequence[float],
    log: Callable[[str], None],
) -> tuple[float, list[Row]]:
    members = load_members()
    test = load_csv(DATA / "digits-test.csv", num_classes=CLASSES, num_features=64)
    t0 = time.perf_counter()
    central = centralised(s, members, test)
    log(
        f"centralised ({s.central_epochs} epochs on pooled data): {central:.4f} "
        f"[{time.perf_counter() - t0:.1f} s]"
    )
    configs = [(rule, "none", 0) for rule in rules]
    for attack in attack_names:
        for fraction in fractions:
            configs += [(rule, attack, round(fraction * MEMBERS)) for rule in rules]
    rows = []
    for rule, attack, k in configs:
        t = time.perf_counter()
        acc = run_fl(s, rule, attack, k, members, test)
        rows.append(Row(rule, attack, k, acc, time.perf_counter() - t))
        log(f"  {rule:8s} {attack:10s} {k} attackers: {acc:.4f} [{rows[-1].seconds:.1f} s]")
    return central, rows


def render(central: float, rows: Sequence[Row], rules: Sequence[str]) -> str:
    clean = {r.rule: r.accuracy for r in rows if r.attack == "none"}
    base = clean.get("fedavg", float("nan"))
    lines = [
        f"centralised: {central:.4f}    clean FedAvg: {base:.4f} "
        f"({100 * (base - central):+.1f} points)",
        "",
        "| attack | attackers | " + " | ".join(rules) + " |",
        "|---|---|" + "---|" * len(rules),
    ]
    cells: dict[tuple[str, int], dict[str, float]] = {}
    for r in rows:
        cells.setdefault((r.attack, r.attackers), {})[r.rule] = r.accuracy
    for (attack, k), by_rule in cells.items():
        values = " | ".join(
            f"{by_rule[rule]:.3f} ({by_rule[rule] / base:.2f} / {by_rule[rule] / central:.2f})"
            if rule in by_rule
            else "-"
            for rule in rules
        )
        lines.append(f"| {attack} | {100 * k // MEMBERS}% | {values} |")
    lines += ["", "cells: accuracy (ratio to clean FedAvg / ratio to centralised)"]
    robust = [rule for rule in rules if rule != "fedavg"]
    worst = max((k for _, k in cells), default=0)
    if robust and worst:
        lines += ["", f"best robust rule per attack at {100 * worst // MEMBERS}% attackers:"]
        for (attack, k), by_rule in cells.items():
            if k != worst:
                continue
            best = max((r for r in robust if r in by_rule), key=lambda r: by_rule[r])
            gap = 100 * (by_rule[best] - base)
            verdict = "within 3 points" if gap >= -3.0 else "MISSES the 3-point target"
            lines.append(f"  {attack:10s} {best:8s} {by_rule[best]:.3f} ({gap:+.1f}) {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--local-epochs", type=int, default=5)
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--central-epochs", type=int, default=50)
    parser.add_argument("--seed", type=int, default=2024)
    parser.add_argument("--rules", nargs="+", default=list(RULES), choices=list(RULES))
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), choices=list(ATTACKS))
    parser.add_argument("--quick", action="store_true", help="5 rounds, 3 attacks, 30%% only")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    fractions: Sequence[float] = FRACTIONS
    attack_names = args.attacks
    rounds = args.rounds
    if args.quick:
        rounds, fractions = min(rounds, 5), (0.3,)
        attack_names = [a for a in attack_names if a in ("sign_flip", "scaling", "alie")]
    s = Settings(
        rounds, args.local_epochs, args.lr, args.batch_size, args.central_epochs, args.seed
    )
    print(f"settings: {s}")
    t0 = time.perf_counter()
    central, rows = run(s, args.rules, attack_names, fractions)
    print()
    print(render(central, rows, args.rules))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json:
        payload = {
            "settings": asdict(s),
            "centralised": central,
            "rows": [asdict(r) for r in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
