"""Poisoning over the network: attacker nodes against the contract and the robust rules.

Each run is a real ``bcfl demo`` consortium (one node process per member; attackers are nodes
started with ``--attack``), so every verdict and aggregate below was decided by consensus and
re-derived by ``verify-chain --deep`` on every home. Accuracy is the aggregate model's on the
held-out digits test set.

CI runs two short cases: 4 members, 3 rounds, 1 attacker boosting its update (the contract must
reject it on chain with its reason, and the model must still learn), and 1 IPM attacker under
``cosine_trajectory`` (every home re-derives its aggregates). The ``slow`` matrix runs 10
members for 30 rounds with K = 1 and 3 attackers for every attack the node implements under
``cosine_trajectory``, next to clean FedAvg, asserts that this one rule keeps every attack but
ALIE within 3 points of clean, and writes the table (see ``save_figures``);
``bench/poisoning_network.py`` runs the same cells with any rules and prints the table.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bcfl_cli.demo.run import ATTACKS, DemoOptions, DemoRun, run_demo
from bcfl_cli.errors import UsageError
from bcfl_cli.node.trainer import attack_by_name
from tests.faults.helpers import save_figures

pytestmark = [pytest.mark.network]


def _supported(attack: str) -> bool:
    try:
        attack_by_name(ATTACKS[attack])
    except UsageError:
        return False
    return True


def _run(tmp_path: Path, **kw: object) -> DemoRun:
    options = DemoOptions(keep=tmp_path / "-".join(f"{v}" for v in kw.values()), **kw)  # type: ignore[arg-type]
    run = run_demo(options)
    assert run.ok, run.to_dict()
    return run


def _summary(run: DemoRun) -> dict[str, object]:
    return {
        "members": run.options.members,
        "attackers": run.options.attackers,
        "attack": run.options.attack,
        "rule": run.options.rule,
        "final_accuracy": round(run.final_accuracy or 0.0, 4),
        **run.verdicts(),
        "wall_s": run.timings.get("total_s"),
    }


@pytest.mark.timeout(300)
def test_boosted_update_is_rejected_on_chain_and_the_model_still_learns(tmp_path: Path) -> None:
    # seeded training: with random seeds the first aggregate's accuracy was seen anywhere from
    # 0.31 to 0.52 and after two rounds straddled 0.5; seeded, the run's updates are the same
    # on every machine and every verdict below is decided by the contract, not by luck
    rounds = 3
    run = _run(
        tmp_path, members=4, rounds=rounds, attackers=1, attack="scaling", rule="median", seed=0
    )
    data = run.to_dict()
    mallory = next(m for m in data["members"] if m["attack"] == "scaling")
    # round 1's boosted delta (~10 x 1.7) breaks the bound of 10; later ones may pass it as
    # honest deltas shrink, and are then outvoted coordinate-wise by the median
    assert mallory["submitted"] >= 1 and mallory["rejections"].get("norm_exceeded", 0) >= 1
    assert set(mallory["rejections"]) == {"norm_exceeded"}, mallory
    first = next(u for u in mallory["updates"] if u["round"] == 1)
    assert first["status"] == "rejected" and first["reason"] == "norm_exceeded"
    honest = [m for m in data["members"] if not m["attack"]]
    assert all(m["accepted"] == rounds and m["rejected"] == 0 for m in honest), honest
    assert data["rounds"][0]["aggregated_updates"] == 3
    # learning, not monotonicity: a round in which mallory's boosted delta slips under the
    # bound moves the 4-member median (the mean of the two middle values) and may cost a few
    # points (CI once saw 0.07 -> 0.52 -> 0.74 -> 0.71); what must hold is that every aggregate
    # is far above the initial model, the last one is past 0.5, and nothing collapsed
    curve = [run.initial_accuracy or 0.0, *data["accuracy"]]
    assert all(a > curve[0] + 0.3 for a in curve[1:]), curve
    assert curve[-1] > 0.5 and curve[-1] >= max(curve) - 0.1, curve
    assert all(n["verify"]["ok"] for n in data["nodes"]) and data["consistent"]
    save_figures("poisoning_short", _summary(run))


@pytest.mark.timeout(300)
def test_cosine_trajectory_runs_through_real_nodes_and_every_home_rederives_it(
    tmp_path: Path,
) -> None:
    # the one rule that reads more than the round (the genesis model too): the proposer
    # computes it, every validator recomputes it before voting and verify-chain --deep
    # recomputes it on every home; one disagreement anywhere and the chain would not commit
    # or would not verify
    rounds = 4
    run = _run(
        tmp_path,
        members=4,
        rounds=rounds,
        attackers=1,
        attack="ipm",
        rule="cosine_trajectory",
        seed=0,
    )
    data = run.to_dict()
    assert len(data["accuracy"]) == rounds
    assert all(n["verify"]["ok"] for n in data["nodes"]) and data["consistent"]
    honest = [m for m in data["members"] if not m["attack"]]
    assert all(m["accepted"] == rounds for m in honest), honest
    curve = [run.initial_accuracy or 0.0, *data["accuracy"]]
    assert curve[-1] > curve[0] + 0.3, curve
    save_figures("poisoning_cosine_trajectory_short", _summary(run))


MATRIX_ATTACKS = ["sign-flip", "scaling", "label-flip", "noise", "free-rider", "alie", "ipm"]


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)
def test_poisoning_matrix_ten_members(tmp_path: Path) -> None:
    # issue 3's setting for its targets: 30 rounds; seeded, so a failure reproduces exactly.
    # One rule, as a genesis fixes one: cosine_trajectory, the only rule measured to hold
    # every attack at K = 3 (bench/README: cosine lost 4.5 points to IPM and sign flip,
    # Multi-Krum 12 to IPM, median and trimmed mean 16-31 in the 10-round matrix). About
    # 1.2 min a run on 2 cores; 15 runs, about 20 min
    rounds, seed = 30, 0
    rows = [_summary(_run(tmp_path, members=10, rounds=rounds, rule="fedavg", seed=seed))]
    clean = float(rows[0]["final_accuracy"])  # type: ignore[arg-type]
    missing = []
    for attack in MATRIX_ATTACKS:
        if not _supported(attack):
            missing.append(attack)
            continue
        for k in (1, 3):
            run = _run(
                tmp_path,
                members=10,
                rounds=rounds,
                attackers=k,
                attack=attack,
                rule="cosine_trajectory",
                seed=seed,
            )
            rows.append(_summary(run))
    save_figures(
        "poisoning_matrix",
        {"clean_fedavg": clean, "rows": rows, "not_implemented_by_the_node": missing},
    )
    for k in (1, 3):
        for attack in MATRIX_ATTACKS:
            cases = [r for r in rows if r["attack"] == attack and r["attackers"] == k]
            if cases and attack != "alie":  # ALIE is reported, not asserted (see the note)
                (case,) = cases
                accuracy = float(case["final_accuracy"])  # type: ignore[arg-type]
                assert accuracy >= clean - 0.03, (attack, k, case)


def test_node_attacks_alie_and_ipm_shape_the_delta() -> None:
    import torch

    own = {"w": torch.tensor([1.0, 2.0])}
    ipm = attack_by_name("ipm")
    assert ipm.delta is not None
    assert torch.equal(ipm.delta(own, 1)["w"], torch.tensor([-0.5, -1.0]))
    alie = attack_by_name("alie:2")
    assert alie.from_estimates is not None
    estimates = [{"w": torch.tensor([0.0, 2.0])}, {"w": torch.tensor([2.0, 2.0])}]
    # mean (1, 2) - 2 * population std (1, 0)
    assert torch.allclose(alie.from_estimates(estimates)["w"], torch.tensor([-1.0, 2.0]))
