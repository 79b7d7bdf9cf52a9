"""`bcfl simulate`: the nodes' rules in one process, checked by verify-chain, and replayable."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bcfl_cli.chain.chain import Chain
from bcfl_cli.cli.app import app
from bcfl_cli.errors import UsageError
from bcfl_cli.home import Home
from bcfl_cli.simulation import Crash, NetworkConfig, Partition, SimOptions, Simulation

runner = CliRunner()


def _verify(home: Path) -> dict[str, object]:
    result = runner.invoke(app, ["verify-chain", "--deep", "--home", str(home), "--json"])
    assert result.exit_code == 0, result.output
    report: dict[str, object] = json.loads(result.stdout)
    return report


def test_four_members_two_rounds_pass_deep_verification(tmp_path: Path) -> None:
    result = Simulation(SimOptions(members=4, rounds=2, seed=1, out=tmp_path)).run()
    assert result.ok, result.to_dict()
    assert [r.accepted for r in result.rounds] == [4, 4]
    assert all(r.accuracy is not None for r in result.rounds)
    for i in range(4):
        report = _verify(tmp_path / f"member-{i:03d}")
        assert report["ok"] and report["head"] == result.head
        assert report["height"] == result.heads[i][0]


def test_same_seed_same_chain_other_seed_other_chain(tmp_path: Path) -> None:
    lossy = NetworkConfig(
        delay_ms=(5, 200), drop=0.1, partitions=(Partition(0, 800, frozenset({0})),)
    )

    def head(seed: int, name: str) -> str:
        options = SimOptions(
            members=4, rounds=1, seed=seed, network=lossy, out=tmp_path / name, score=False
        )
        result = Simulation(options).run()
        assert result.ok, result.to_dict()
        return result.head

    first = head(5, "a")
    assert head(5, "b") == first
    assert head(6, "c") != first


def test_a_crashed_member_and_a_byzantine_validator_do_not_stop_the_rounds(
    tmp_path: Path,
) -> None:
    """n = 7, f = 2: one validator down for good and one equivocating leave a quorum of 5."""
    options = SimOptions(
        members=7,
        rounds=2,
        seed=2,
        crashes=(Crash(1, 50),),
        byzantine=((4, "equivocate"), (6, "scaling")),
        out=tmp_path,
        score=False,
    )
    result = Simulation(options).run()
    assert result.ok, result.to_dict()
    assert 1 not in result.heads and 4 not in result.heads  # down, Byzantine: not counted
    assert result.evidence >= 1
    home = Home(tmp_path / "member-000")
    with Chain.open(home) as chain:
        offenders = {offence[0] for offence in chain.state.offences}
    assert len(offenders) == 1  # the equivocator, recorded on chain by an honest proposer
    # the scaled update broke the contract's norm bound: rejected on chain, round went on
    assert all(r.accepted == 5 for r in result.rounds)
    _verify(home.root)


def test_a_member_back_from_a_crash_catches_up(tmp_path: Path) -> None:
    options = SimOptions(
        members=4, rounds=2, seed=3, crashes=(Crash(2, 50, 2500),), out=tmp_path, score=False
    )
    result = Simulation(options).run()
    assert result.ok, result.to_dict()
    assert result.heads[2] == result.heads[0]
    _verify(tmp_path / "member-002")


def test_cli_json_summary(tmp_path: Path) -> None:
    out = tmp_path / "homes"
    result = runner.invoke(
        app, ["simulate", "--members", "4", "--rounds", "1", "--out", str(out), "--json"]
    )
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["ok"] and len(summary["rounds"]) == 1
    for key in ("round_wall_s_median", "round_cpu_s_median", "bytes", "head"):
        assert key in summary
    for key in ("wall_s", "cpu_s", "bytes", "accuracy", "model"):
        assert key in summary["rounds"][0]
    assert 0 < summary["rounds"][0]["bytes"] <= summary["bytes"]


def test_cli_refuses_too_many_faults() -> None:
    result = runner.invoke(app, ["simulate", "--members", "4", "--crash", "1@5", "--crash", "2@5"])
    assert result.exit_code == 2
    assert "floor" in result.output


@pytest.mark.parametrize("members", [1])
def test_a_single_member_runs_alone(tmp_path: Path, members: int) -> None:
    result = Simulation(
        SimOptions(members=members, rounds=2, seed=0, out=tmp_path, score=False)
    ).run()
    assert result.ok


def test_an_existing_simulation_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "consortium.toml").write_text("# a previous run\n")
    with pytest.raises(UsageError, match="already holds"):
        Simulation(SimOptions(members=4, out=tmp_path)).run()


def test_a_proposer_leaves_out_what_the_rules_refuse(tmp_path: Path) -> None:
    """A pending transaction the chain rules refuse (here evidence from a non-member) is
    dropped from the plan, and the block carries the rest: the round still opens."""
    import nacl.signing

    from bcfl_cli.protocol.block import NIL, Vote, VoteType
    from bcfl_cli.protocol.crypto import did_from_public_key
    from bcfl_cli.protocol.tx import TxKind, make_tx
    from bcfl_cli.simulation.simulator import _App

    sim = Simulation(SimOptions(members=4, rounds=1, out=tmp_path, score=False))
    sim.setup()
    member = sim.members[0]
    stranger = nacl.signing.SigningKey(b"\x07" * 32)
    did = did_from_public_key(bytes(stranger.verify_key))
    chain_id = member.chain.genesis_hash
    votes = [
        Vote(chain_id, 1, 0, VoteType.PREVOTE, block, did).signed(stranger).to_dict()
        for block in (NIL, "ab" * 32)
    ]
    bogus = make_tx(stranger, chain_id, TxKind.MISBEHAVIOUR, {"offender": did, "votes": votes})
    member.mempool[bogus.hash] = bogus
    block = _App(sim, member).propose(1, 0)
    assert [tx.kind for tx in block.txs] == [TxKind.OPEN_ROUND]
    assert bogus.hash not in member.mempool
    for m in sim.members:
        m.chain.close()


def test_bfloat16_updates_halve_the_bytes_and_pass_deep_verification(tmp_path: Path) -> None:
    """``--update-dtype``: the genesis fixes the updates' dtype; every member's contract expects
    it and every aggregate stays exact, so ``verify-chain --deep`` accepts each store."""
    out = tmp_path / "bf16"
    result = runner.invoke(
        app,
        ["simulate", "--members", "4", "--rounds", "1", "--seed", "3"]
        + ["--update-dtype", "bfloat16", "--out", str(out), "--json"],
    )
    assert result.exit_code == 0, result.output
    half = json.loads(result.stdout)
    full = Simulation(SimOptions(members=4, rounds=1, seed=3, out=tmp_path / "f32")).run()
    assert half["ok"] and full.ok
    assert half["rounds"][0]["accepted"] == 4
    # the updates are half the bytes (the model and the chain's own messages are not)
    assert half["bytes"] < full.bytes
    with Chain.open(Home(out / "member-000")) as chain:
        assert chain.state.config.contract.update_dtype == "bfloat16"
    for i in range(4):
        assert _verify(out / f"member-{i:03d}")["ok"]


def test_cli_refuses_an_unknown_update_dtype() -> None:
    result = runner.invoke(app, ["simulate", "--update-dtype", "int8"])
    assert result.exit_code == 2
    assert "bfloat16" in result.output
