"""The demo's pieces without processes: the consortium file it writes, options, plots."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import nacl.signing
import pytest

from bcfl_cli.consortium.config import load_config
from bcfl_cli.demo.launcher import GenesisPlan, MemberPlan, consortium_toml
from bcfl_cli.demo.plot import text_plot
from bcfl_cli.demo.progress import ChainProgress
from bcfl_cli.demo.run import (
    DemoOptions,
    DemoRun,
    genesis_plan,
    mark_rule_inclusion,
    member_names,
    member_plans,
    partitions,
    sample_data_dir,
)
from bcfl_cli.errors import UsageError
from bcfl_cli.protocol.crypto import did_from_public_key
from bcfl_cli.protocol.spec import AggregationSpec, DPSpec, TrainingPlan
from bcfl_cli.protocol.tx import TxKind, make_tx


def _did(i: int) -> str:
    return did_from_public_key(bytes(nacl.signing.SigningKey(bytes([i + 1]) * 32).verify_key))


@pytest.mark.parametrize("dataset", ["digits", "breast-cancer"])
@pytest.mark.parametrize("rule", ["fedavg", "krum"])
def test_consortium_file_round_trips_through_the_config_loader(
    tmp_path: Path, dataset: str, rule: str
) -> None:
    options = DemoOptions(
        members=5, rounds=7, dataset=dataset, rule=rule, attackers=1, attack="scaling"
    )
    plan = genesis_plan(options)
    names = member_names(5, 1)
    toml = consortium_toml(plan, [(MemberPlan(n), _did(i)) for i, n in enumerate(names)])
    path = tmp_path / "consortium.toml"
    path.write_text(toml)
    config = load_config(path)
    assert [m.name for m in config.members] == ["alice", "bob", "carol", "dave", "mallory-1"]
    assert config.model == plan.model and config.training == plan.training
    assert config.contract == plan.contract and config.aggregation == plan.aggregation
    assert config.training.rounds == 7 and config.training.min_updates == 5
    # Multi-Krum expecting the one attacker: scores over n - f - 2 neighbours, keeps n - f
    assert (config.aggregation.krum_f, config.aggregation.krum_m) == (1, 4)
    assert config.aggregation.trim_beta == 0.2  # floor(0.2 x 5) = 1 cut at each end


def test_robust_rules_are_set_for_the_attackers_expected() -> None:
    spec = genesis_plan(DemoOptions(members=10, attackers=3, attack="ipm")).aggregation
    assert (spec.trim_beta, spec.krum_f, spec.krum_m) == (0.3, 3, 7)
    spec = genesis_plan(DemoOptions(members=10)).aggregation  # none expected: guard against one
    assert (spec.trim_beta, spec.krum_f, spec.krum_m) == (0.1, 1, 9)


def test_nested_dp_table_and_floats_are_written_as_toml(tmp_path: Path) -> None:
    base = genesis_plan(DemoOptions())
    training = TrainingPlan(lr=1e-5, dp=DPSpec(enabled=True, noise_multiplier=0.7, delta=1e-6))
    plan = GenesisPlan(
        model=base.model, training=training, admission_approvals=1, removal_approvals=1
    )
    path = tmp_path / "c.toml"
    path.write_text(consortium_toml(plan, [(MemberPlan("a"), _did(0))]))
    config = load_config(path)
    assert config.training.dp == training.dp and config.training.lr == 1e-5


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"members": 0}, "--members"),
        ({"rounds": 0}, "--rounds"),
        ({"dataset": "mnist"}, "--dataset"),
        ({"rule": "mean"}, "--rule"),
        ({"attackers": 4}, "--attackers"),
        ({"attackers": 1}, "--attack"),
        ({"attackers": 1, "attack": "backdoor"}, "--attack"),
        ({"non_iid": -1.0}, "--non-iid"),
    ],
)
def test_impossible_options_are_refused_before_anything_starts(
    kw: dict[str, object], message: str
) -> None:
    with pytest.raises(UsageError, match=message):
        DemoOptions(**kw).check()  # type: ignore[arg-type]


def test_shipped_partitions_are_used_and_others_are_split(tmp_path: Path) -> None:
    data = sample_data_dir()
    shipped = partitions(DemoOptions(members=4), data, tmp_path)
    assert [p.parent.name for p in shipped] == ["4-dir0.5"] * 4
    made = partitions(DemoOptions(members=3, non_iid=0), data, tmp_path)
    assert len(made) == 3 and all(p.is_relative_to(tmp_path) for p in made)
    rows = sum(len(p.read_text().splitlines()) - 1 for p in made)
    assert rows == len((data / "digits-train.csv").read_text().splitlines()) - 1


def test_seeded_demo_gives_each_member_a_fixed_seed_of_its_own(tmp_path: Path) -> None:
    def plans(seed: int | None) -> list[MemberPlan]:
        options = DemoOptions(members=4, attackers=1, attack="scaling", seed=seed)
        names = member_names(4, 1)
        run = DemoRun(options, tmp_path, names, {"mallory-1": "scaling"})
        return member_plans(run, [tmp_path / f"{n}.csv" for n in names])

    seeded = plans(0)
    seeds = [p.train_seed for p in seeded]
    assert all(s is not None for s in seeds) and len(set(seeds)) == 4
    assert [p.train_seed for p in plans(0)] == seeds  # the same on every run
    assert [p.train_seed for p in plans(1)] != seeds
    assert all(p.train_seed is None for p in plans(None))  # each node draws its own
    assert [p.attack for p in seeded] == [None, None, None, "scaling"]


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, i = [], 8
    while i < len(data):
        (length,) = struct.unpack(">I", data[i : i + 4])
        kind, body = data[i + 4 : i + 8], data[i + 8 : i + 8 + length]
        (crc,) = struct.unpack(">I", data[i + 8 + length : i + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        chunks.append((kind, body))
        i += 12 + length
    return chunks


def _round_with_an_outlier(tmp_path: Path) -> tuple[DemoRun, dict[str, bytes], AggregationSpec]:
    """Round 1 of a chain: three accepted updates, one far from the others, one rejected."""
    import torch

    from bcfl_cli.fl.aggregation.base import UpdateInput, aggregate
    from bcfl_cli.fl.models import state_bytes
    from bcfl_cli.protocol.encoding import sha256_hex

    spec = AggregationSpec(rule="krum", krum_f=1, krum_m=2)
    names = ["alice", "bob", "carol", "mallory-1"]
    keys = {n: nacl.signing.SigningKey(bytes([i + 1]) * 32) for i, n in enumerate(names)}
    dids = {n: did_from_public_key(bytes(k.verify_key)) for n, k in keys.items()}
    blobs: dict[str, bytes] = {}

    def put(state: dict[str, torch.Tensor]) -> str:
        data = state_bytes(state)
        digest = sha256_hex(data)
        blobs[digest] = data
        return digest

    base = {"w": torch.zeros(4)}
    base_hash = put(base)
    deltas = {
        "alice": torch.tensor([1.0, 1.0, 0.0, 0.0]),
        "bob": torch.tensor([1.1, 0.9, 0.0, 0.0]),
        "carol": torch.tensor([-9.0, 9.0, 9.0, 9.0]),
    }
    chain = "ab" * 32
    opened = make_tx(
        keys["alice"], chain, TxKind.OPEN_ROUND,
        {"round": 1, "base_model": base_hash, "deadline_height": 9},
    )  # fmt: skip
    txs, inputs = [opened], []
    for name in names:
        delta = deltas.get(name, torch.tensor([0.0, 0.0, 0.0, 5.0]))
        body = {
            "round": 1, "base_model": base_hash, "blob": put({"w": delta}), "blob_size": 10,
            "num_samples": 20, "metrics": {},
        }  # fmt: skip
        update = make_tx(keys[name], chain, TxKind.UPDATE, body)
        verdict = "reject" if name == "mallory-1" else "accept"
        reason = "norm_exceeded" if verdict == "reject" else "ok"
        check = {"update": update.hash, "verdict": verdict, "reason": reason, "detail": ""}
        txs += [update, make_tx(keys["alice"], chain, TxKind.VALIDATION, check)]
        if verdict == "accept":
            inputs.append(UpdateInput(update.hash, {"w": delta}, 20))
    result = aggregate(spec, base, inputs)
    agg = {
        "round": 1, "updates": sorted(u.hash for u in inputs), "rule": "krum", "params": {},
        "model": result.model_hash, "model_size": 10,
    }  # fmt: skip
    txs.append(make_tx(keys["alice"], chain, TxKind.AGGREGATE, agg))
    progress = ChainProgress({d: n for n, d in dids.items()})
    progress.feed({"header": {"height": 1}, "txs": [t.to_dict() for t in txs]}, "h1")
    progress.rounds[1].accuracy = 0.61
    options = DemoOptions(members=4, attackers=1, attack="scaling", rule="krum", seed=3)
    run = DemoRun(options, tmp_path, names, {"mallory-1": "scaling"}, dids=dids)
    run.progress, run.initial_accuracy = progress, 0.1
    return run, blobs, spec


def test_the_rule_inclusion_is_recomputed_and_charted(tmp_path: Path) -> None:
    from bcfl_cli.demo.chart import cell_status, settings_line, write_chart

    run, blobs, spec = _round_with_an_outlier(tmp_path)
    progress = run.progress
    assert progress is not None
    mark_rule_inclusion(progress, spec, "00" * 32, blobs.get, 1 << 20)
    assert [cell_status(run, n, 1)[0] for n in run.names] == [
        "included", "included", "left out", "rejected"
    ]  # fmt: skip
    assert cell_status(run, "mallory-1", 1)[1] == "norm_exceeded"
    assert "krum" in settings_line(run) and "seed 3" in settings_line(run)
    path, note = write_chart(run, tmp_path / "accuracy.png")
    assert path is not None and note == ""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    # a model on chain that the recomputation does not reproduce: nothing is claimed
    progress.rounds[1].model = "00" * 32
    for per in progress.updates.values():
        for record in per.values():
            record.included = None
    mark_rule_inclusion(progress, spec, "00" * 32, blobs.get, 1 << 20)
    assert {cell_status(run, n, 1)[0] for n in run.names[:3]} == {"accepted"}


def test_without_matplotlib_the_demo_says_how_to_get_the_chart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    from bcfl_cli.demo.chart import write_chart

    run, _, _ = _round_with_an_outlier(tmp_path)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path, note = write_chart(run, tmp_path / "accuracy.png")
    assert path is None and "bcfl[plot]" in note
    assert not (tmp_path / "accuracy.png").exists()


def test_text_plot_places_every_round() -> None:
    rows = text_plot([(0, 0.1), (5, 0.5), (10, 0.95)], width=40)
    assert sum(r.count("●") for r in rows) == 3
    assert rows[-1].split()[:3] == ["0", "2", "4"] and rows[-1].endswith("round")
    assert text_plot([]) == ["(no rounds scored)"]


def test_progress_folds_updates_verdicts_and_aggregates() -> None:
    key = nacl.signing.SigningKey(b"\x07" * 32)
    chain = "ab" * 32
    did = did_from_public_key(bytes(key.verify_key))
    opened = make_tx(
        key, chain, TxKind.OPEN_ROUND, {"round": 1, "base_model": "cd" * 32, "deadline_height": 9}
    )
    update = make_tx(
        key,
        chain,
        TxKind.UPDATE,
        {
            "round": 1,
            "base_model": "cd" * 32,
            "blob": "ef" * 32,
            "blob_size": 10,
            "num_samples": 20,
            "metrics": {},
        },
    )
    verdict = make_tx(
        key,
        chain,
        TxKind.VALIDATION,
        {
            "update": update.hash,
            "verdict": "reject",
            "reason": "norm_exceeded",
            "detail": "norm 99 > 20",
        },
    )
    aggregate = make_tx(
        key,
        chain,
        TxKind.AGGREGATE,
        {
            "round": 1,
            "updates": [],
            "rule": "fedavg",
            "params": {},
            "model": "12" * 32,
            "model_size": 10,
        },
    )
    progress = ChainProgress({did: "alice"})
    progress.feed({"header": {"height": 1}, "txs": [opened.to_dict()]}, "h1")
    progress.feed({"header": {"height": 2}, "txs": [update.to_dict(), verdict.to_dict()]}, "h2")
    assert progress.member_counts(did) == {"submitted": 1, "accepted": 0, "rejected": 1}
    assert progress.rejections(did) == {"norm_exceeded": 1}
    assert progress.closed_rounds == []
    progress.feed({"header": {"height": 3}, "txs": [aggregate.to_dict()]}, "h3")
    assert [r.number for r in progress.closed_rounds] == [1]
    assert progress.closed_rounds[0].model == "12" * 32 and progress.head == "h3"
    with pytest.raises(ValueError, match="expected block 4"):
        progress.feed({"header": {"height": 9}, "txs": []}, "h9")


def test_live_view_clock_moves_without_events(tmp_path: Path) -> None:
    """The live view is rendered on every refresh, not only when the demo reports an event:
    the clock kept showing 0.5 s while nodes started for 21 s."""
    import io

    from rich.console import Console

    from bcfl_cli.demo.render import _LiveView

    options = DemoOptions(members=4)
    run = DemoRun(options, tmp_path, member_names(4, 0), {}, started=100.0)
    view = _LiveView()
    view.run = run
    import bcfl_cli.demo.run as run_module

    def render() -> str:
        out = io.StringIO()
        Console(file=out, width=200).print(view)
        return out.getvalue()

    clock = iter([100.5, 121.0])
    original = run_module.time.monotonic
    run_module.time.monotonic = lambda: next(clock)  # type: ignore[assignment]
    try:
        first, second = render(), render()
    finally:
        run_module.time.monotonic = original  # type: ignore[assignment]
    assert "0.5 s" in first and "21.0 s" in second


def test_line_reporter_writes_one_line_per_event_however_long(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from bcfl_cli.demo.render import LineReporter

    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False)
    run = DemoRun(DemoOptions(members=4), tmp_path, member_names(4, 0), {})
    run.phase = "starting nodes " + "x" * 120
    LineReporter(console)(run)
    assert len(out.getvalue().splitlines()) == 1
