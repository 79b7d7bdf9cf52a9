"""join, members, submit, status and model export through the real Typer app, talking to the
real node app in-process (tests/node/_node_harness.py) instead of a socket."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from bcfl_cli.cli import join_cmd, members_cmd, model_cmd, status_cmd, submit_cmd
from bcfl_cli.cli.app import app
from bcfl_cli.client import NodeApi
from bcfl_cli.identity import Identity
from bcfl_cli.training.local_round import train_for_round
from tests.conftest import PASSPHRASE, MakeHome
from tests.node._node_harness import URL, LocalNode, key, part

runner = CliRunner()


@pytest.fixture
def local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalNode]:
    yield from _wired(LocalNode(tmp_path), monkeypatch)


#: A plan of one round that one update closes, for the finished state.
ONE_ROUND = {"rounds = 10": "rounds = 1", "min_updates = 2 ": "min_updates = 1 "}


@pytest.fixture
def one_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalNode]:
    yield from _wired(LocalNode(tmp_path, edit=ONE_ROUND), monkeypatch)


def _wired(harness: LocalNode, monkeypatch: pytest.MonkeyPatch) -> Iterator[LocalNode]:
    """The CLI modules talk to ``harness``'s app in-process, as founder alice."""

    def api(url: str, signer: Any = None, **_: Any) -> NodeApi:
        assert url.rstrip("/") == URL
        return harness.api(signer)

    for module in (join_cmd, members_cmd, model_cmd, status_cmd, submit_cmd):
        monkeypatch.setattr(module, "NodeApi", api)
    # the harness home holds founder alice's ledger; her key is the deterministic test key
    alice = Identity("alice", key("alice"))
    for module in (members_cmd, submit_cmd):
        monkeypatch.setattr(module, "load_identity", lambda *_a, **_k: alice)
    monkeypatch.setenv("BCFL_PASSPHRASE", PASSPHRASE.decode())
    harness.home.node_dir.mkdir(parents=True, exist_ok=True)
    (harness.home.node_dir / "node.json").write_text(json.dumps({"url": URL}))
    yield harness
    harness.close()


def bcfl(*args: str) -> Any:
    return runner.invoke(app, list(args))


def test_status_json_and_table(local: LocalNode) -> None:
    home = str(local.home.root)
    result = bcfl("status", "--home", home, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["height"] == 0 and data["genesis"] == local.node.genesis_hash
    assert len(data["members"]) == 4 and data["alarm"] is None
    table = bcfl("status", "--home", home)
    assert table.exit_code == 0
    assert "round" in table.stdout and "0 updates accepted" in table.stdout
    assert all(name in table.stdout for name in ("alice", "bob", "carol", "dave"))


def test_status_shows_a_safety_alarm_and_exits_3(local: LocalNode) -> None:
    alarm = {"height": 7, "blocks": ["aa" * 32, "bb" * 32], "message": "two blocks"}
    local.node.chain.alarm = alarm
    result = bcfl("status", "--home", str(local.home.root))
    assert result.exit_code == 3
    assert "SAFETY ALARM" in result.stdout and "height 7" in result.stdout


def test_join_then_members_approve_and_list(
    local: LocalNode, make_home: MakeHome, monkeypatch: pytest.MonkeyPatch
) -> None:
    erin = make_home("erin")
    monkeypatch.setenv("BCFL_PASSPHRASE", PASSPHRASE.decode())
    no_tty = bcfl("join", URL, "--home", str(erin.root))
    assert no_tty.exit_code == 2 and "--genesis-hash" in no_tty.output
    wrong = bcfl("join", URL, "--home", str(erin.root), "--genesis-hash", "00" * 32)
    assert wrong.exit_code == 1 and "not the expected" in wrong.output
    joined = bcfl(
        "join", URL, "--home", str(erin.root), "--genesis-hash", local.node.genesis_hash,
        "--roles", "trainer", "--json",
    )  # fmt: skip
    assert joined.exit_code == 0, joined.output
    out = json.loads(joined.stdout)
    assert out["name"] == "erin" and out["approvals_needed"] == 3 and out["ledger_created"]
    listed = json.loads(bcfl("members", "list", "--home", str(local.home.root), "--json").stdout)
    assert [p["name"] for p in listed["pending"]] == ["erin"]
    approved = bcfl("members", "approve", erin.did, "--home", str(local.home.root), "--json")
    assert approved.exit_code == 0, approved.output
    change = json.loads(approved.stdout)
    assert change["committed"] and change["approvals"] == 1 and not change["effective"]
    again = bcfl("members", "approve", "erin", "--home", str(local.home.root))
    assert again.exit_code == 2 and "already approved" in again.output
    table = bcfl("members", "list", "--home", str(local.home.root))
    assert table.exit_code == 0 and "1/3" in table.stdout


def test_submit_accepted_and_rejected(local: LocalNode) -> None:
    home = str(local.home.root)
    local.mine()  # round 1 opens
    train_for_round(local.home, part(1), seed=2)
    accepted = bcfl("submit", "--home", home, "--json")
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout)["verdict"] == "accept"
    # a second update from the same member in the same round is refused: exit 1, with reason
    again = bcfl("submit", "--home", home)
    assert again.exit_code == 1 and "duplicate_update" in again.stdout


def test_submit_rejected_by_the_contract(local: LocalNode) -> None:
    local.mine()
    folder = local.home.root / "updates"
    folder.mkdir()
    (folder / "round-1.safetensors").write_bytes(b"PK\x03\x04 a zip, not safetensors")
    meta = {"round": 1, "base_model": local.state.round.base_model, "num_samples": 10}
    (folder / "round-1.json").write_text(json.dumps(meta))
    result = bcfl("submit", str(folder / "round-1.safetensors"), "--home", str(local.home.root))
    assert result.exit_code == 1
    assert "rejected" in result.stdout and "malformed_blob" in result.stdout


def test_model_export(local: LocalNode, tmp_path: Path) -> None:
    out = tmp_path / "model.safetensors"
    result = bcfl("model", "export", "--out", str(out), "--home", str(local.home.root), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["round"] == 0 and data["model"] == local.node.chain.document["initial_model"]
    assert hashlib.sha256(out.read_bytes()).hexdigest() == data["model"]
    missing = bcfl(
        "model", "export", "--round", "3", "--out", str(out), "--home", str(local.home.root)
    )
    assert missing.exit_code == 2 and "has no aggregate" in missing.output


def test_status_falls_back_to_the_ledger_when_the_node_is_down(tmp_path: Path) -> None:
    from tests.network.cluster import free_ports
    from tests.node._node_harness import consortium_home

    home = consortium_home(tmp_path)
    home.node_dir.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]  # nothing listens there
    (home.node_dir / "node.json").write_text(json.dumps({"listen": f"127.0.0.1:{port}"}))
    result = bcfl("status", "--home", str(home.root), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["offline"] is True and data["height"] == 0 and data["peers"] == []
    assert "showing this home's ledger" in result.stderr
    # an alarm recorded by the node before it stopped is still reported, loudly
    from bcfl_cli.store.ledger import Ledger

    with Ledger.open(home) as ledger:
        genesis = ledger.block(0).to_dict()
    alarm = {"height": 3, "message": "two blocks", "source": "x", "blocks": [genesis, genesis]}
    (home.node_dir / "alarm.json").write_text(json.dumps(alarm))
    loud = bcfl("status", "--home", str(home.root))
    assert loud.exit_code == 3 and "SAFETY ALARM" in loud.stdout and "not running" in loud.stdout
    # asking a named node that is down is an error, not a fallback
    named = bcfl("status", "--home", str(home.root), "--node", f"127.0.0.1:{port}")
    assert named.exit_code == 1 and "no answer" in named.output


def test_members_approve_with_a_lagging_or_nodeless_home(
    local: LocalNode, make_home: MakeHome, tmp_path: Path
) -> None:
    import shutil

    stale = tmp_path / "stale"
    shutil.copytree(local.home.root, stale)  # node.json names the node; the ledger is at 0
    nodeless = tmp_path / "nodeless"
    shutil.copytree(local.home.root, nodeless, ignore=shutil.ignore_patterns("node"))
    erin = make_home("erin")
    joined = bcfl(
        "join", URL, "--home", str(erin.root), "--genesis-hash", local.node.genesis_hash,
        "--roles", "trainer",
    )  # fmt: skip
    assert joined.exit_code == 0, joined.output
    refused = bcfl("members", "approve", "erin", "--home", str(nodeless))
    assert refused.exit_code == 1
    assert "no node recorded" in refused.stderr and "bcfl node" in refused.stderr
    approved = bcfl("members", "approve", "erin", "--home", str(stale), "--json")
    assert approved.exit_code == 0, approved.output
    assert json.loads(approved.stdout)["approvals"] == 1


def test_submit_when_this_members_node_is_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from tests.network.cluster import free_ports
    from tests.node._node_harness import consortium_home

    home = consortium_home(tmp_path)
    train_for_round(home, part(1), seed=1)
    home.node_dir.mkdir(parents=True, exist_ok=True)
    port = free_ports(1)[0]  # nothing listens there
    (home.node_dir / "node.json").write_text(json.dumps({"listen": f"127.0.0.1:{port}"}))
    monkeypatch.setattr(submit_cmd, "load_identity", lambda *_a, **_k: Identity("a", key("alice")))
    monkeypatch.setenv("BCFL_PASSPHRASE", PASSPHRASE.decode())
    result = bcfl("submit", "--home", str(home.root), "--timeout", "5", "--json")
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert "this member's node does not answer" in error["message"]
    assert f"bcfl node --home {home.root}" in error["hint"]


def test_a_founder_that_runs_join_is_told_to_init(
    local: LocalNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(join_cmd, "load_identity", lambda *_a, **_k: Identity("bob", key("bob")))
    result = bcfl(
        "join", URL, "--home", str(tmp_path / "bob"), "--genesis-hash", local.node.genesis_hash,
        "--json",
    )  # fmt: skip
    assert result.exit_code == 2
    error = json.loads(result.stdout)["error"]
    assert "already a member" in error["message"]
    assert "does not join" in error["hint"] and "--time-ms" in error["hint"]
    assert not (tmp_path / "bob" / "chain.sqlite").exists()  # nothing pinned


def test_init_tells_the_other_founders_what_to_run(tmp_path: Path) -> None:
    from bcfl_cli.consortium.example import filled_example
    from bcfl_cli.protocol.crypto import did_from_public_key
    from tests.cli.test_train_cli import NAMES
    from tests.cli.test_train_cli import key as train_key

    members = [(n, did_from_public_key(bytes(train_key(n).verify_key))) for n in NAMES]
    toml = tmp_path / "consortium.toml"
    toml.write_text(filled_example(members), encoding="utf-8")
    result = bcfl("init", str(toml), "--home", str(tmp_path / "a"), "--time-ms", "1767225600000")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert "--time-ms 1767225600000 --home THEIR_HOME" in text
    assert "Founders never run `bcfl join`" in text


def test_the_finished_plan_in_status_train_submit_and_the_log(
    one_round: LocalNode, caplog: pytest.LogCaptureFixture
) -> None:
    local = one_round
    home = str(local.home.root)
    local.mine()  # round 1 of 1 opens
    running = json.loads(bcfl("status", "--home", home, "--json").stdout)
    assert running["plan"] == {
        "rounds": 1, "finished": False, "finished_height": None, "finished_time": None
    }  # fmt: skip
    train_for_round(local.home, part(1), seed=2)
    with caplog.at_level(logging.INFO, logger="bcfl.node"):
        accepted = bcfl("submit", "--home", home, "--json")  # its update closes the round
    assert accepted.exit_code == 0, accepted.output
    assert not local.state.round.open and local.state.plan_finished
    finished_logs = [r for r in caplog.records if r.getMessage() == "training plan finished"]
    assert len(finished_logs) == 1
    data = json.loads(bcfl("status", "--home", home, "--json").stdout)
    head = local.node.chain.head
    assert data["plan"] == {
        "rounds": 1,
        "finished": True,
        "finished_height": head.height,
        "finished_time": head.header.time,
    }
    table = bcfl("status", "--home", home)
    assert "finished (1 of 1 rounds) at height" in table.stdout
    # train: nothing to train, exit 0, nothing written (it used to write round 2, "not open yet")
    trained = bcfl("train", "--home", home, "--data", str(part(1)))
    assert trained.exit_code == 0, trained.output
    assert "the training plan is finished (1 rounds); nothing to train" in trained.stdout
    assert not (local.home.root / "updates" / "round-2.safetensors").exists()
    as_json = json.loads(bcfl("train", "--home", home, "--data", str(part(1)), "--json").stdout)
    assert as_json["plan_finished"] is True and as_json["rounds"] == 1
    # submit: the same answer before anything is uploaded (it used to be refused wrong_round)
    submitted = bcfl("submit", "--home", home)
    assert submitted.exit_code == 0, submitted.output
    assert "the training plan is finished (1 rounds)" in submitted.stdout
    # the node's door says why too, to a client that does not ask the status first
    assert local.mine() is None  # and nothing more to propose: no block
