"""bcfl init and bcfl consortium example through the real Typer app."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.consortium.example import example_text
from bcfl_cli.home import Home
from bcfl_cli.store.ledger import Ledger
from tests.consortium.helpers import example_toml, write_config

runner = CliRunner()
T = "1700000000000"


def test_example_prints_the_shipped_file():
    result = runner.invoke(app, ["consortium", "example"])
    assert result.exit_code == 0
    assert result.stdout == example_text()


def test_example_filled_from_homes_then_init(make_home, tmp_path):
    members = [make_home(n) for n in ("alice", "bob", "carol", "dave")]
    out = tmp_path / "c.toml"
    args = ["consortium", "example", "--out", str(out)]
    for m in members:
        args += ["--member", f"{m.name}={m.root}"]
    written = runner.invoke(app, args)
    assert written.exit_code == 0, written.output
    for m in members:
        assert f'did = "{m.did}"' in out.read_text()

    again = runner.invoke(app, args)
    assert again.exit_code == 2
    assert "already exists" in again.stderr

    init = runner.invoke(
        app, ["init", str(out), "--home", str(members[0].root), "--json", "--time-ms", T]
    )
    assert init.exit_code == 0, init.output
    report = json.loads(init.stdout)
    assert report["local_member"] == "alice"
    assert report["warnings"] == []
    assert [m["name"] for m in report["members"]] == ["alice", "bob", "carol", "dave"]
    with Ledger.open(members[0].home) as ledger:
        assert ledger.genesis_hash == report["genesis_hash"]
        assert ledger.head().header.time == int(T)


def test_init_human_output(tmp_path):
    path = write_config(tmp_path, example_toml(("alice", "bob", "carol")))
    result = runner.invoke(app, ["init", str(path), "--home", str(tmp_path / "h"), "--time-ms", T])
    assert result.exit_code == 0, result.output
    with Ledger.open(Home.resolve(tmp_path / "h")) as ledger:
        genesis_hash = ledger.genesis_hash
    assert genesis_hash in result.stdout
    assert "Founding members" in result.stdout
    for name in ("alice", "bob", "carol"):
        assert name in result.stdout
    assert "warning: n=3 validators tolerate no fault: quorum is 3 of 3" in result.stderr


def test_init_is_reproducible_with_a_fixed_time(tmp_path):
    path = write_config(tmp_path)
    hashes = set()
    for home in ("a", "b"):
        result = runner.invoke(
            app, ["init", str(path), "--home", str(tmp_path / home), "--json", "--time-ms", T]
        )
        hashes.add(json.loads(result.stdout)["genesis_hash"])
    assert len(hashes) == 1


def test_founders_agree_on_the_genesis_with_time_ms(make_home, tmp_path):
    """The genesis ceremony: every founder runs init in its own home on the same file and the
    same --time-ms, and all get the same genesis; another time is another consortium."""
    founders = [make_home(n) for n in ("alice", "bob", "carol", "dave")]
    path = tmp_path / "c.toml"
    args = ["consortium", "example", "--out", str(path)]
    for m in founders:
        args += ["--member", f"{m.name}={m.root}"]
    assert runner.invoke(app, args).exit_code == 0
    agreed = "1767225600000"
    results = [
        runner.invoke(app, ["init", str(path), "--home", str(m.root), "--time-ms", agreed])
        for m in founders
    ]
    assert all(r.exit_code == 0 for r in results), [r.output for r in results]
    hashes = set()
    for m in founders:
        ledger = Ledger.open(Home.resolve(m.root))
        hashes.add(ledger.block(0).hash)
        ledger.close()
    assert len(hashes) == 1
    assert all("1767225600000 (2026-01-01T00:00:00.000Z)" in r.stdout for r in results)
    later = runner.invoke(
        app, ["init", str(path), "--home", str(tmp_path / "x"), "--json", "--time-ms", "1"]
    )
    assert json.loads(later.stdout)["genesis_hash"] not in hashes
    assert json.loads(later.stdout)["time"] == 1


def test_time_ms_is_documented_and_bounded(tmp_path):
    help_text = runner.invoke(app, ["init", "--help"], terminal_width=200).stdout
    words = " ".join(help_text.replace("│", " ").split())  # however rich wraps the column
    assert "--time-ms" in help_text and "same genesis hash" in words
    path = write_config(tmp_path)
    for bad in ("-1", str(2**53), "soon"):
        result = runner.invoke(
            app, ["init", str(path), "--home", str(tmp_path / "h"), "--time-ms", bad]
        )
        assert result.exit_code == 2, bad
    assert not (tmp_path / "h" / "chain.sqlite").exists()


def test_bad_config_is_a_usage_error_naming_the_key(tmp_path):
    text = example_toml().replace("rule = ", "rulez = ", 1)
    path = write_config(tmp_path, text)
    result = runner.invoke(app, ["init", str(path), "--home", str(tmp_path / "h")])
    assert result.exit_code == 2
    assert "consortium.toml: aggregation.rulez: unknown key" in result.stderr
    assert "Traceback" not in result.output
    assert not (tmp_path / "h" / "chain.sqlite").exists()


def test_init_twice_is_refused(tmp_path):
    path = write_config(tmp_path)
    args = ["init", str(path), "--home", str(tmp_path / "h"), "--time-ms", T]
    assert runner.invoke(app, args).exit_code == 0
    second = runner.invoke(app, args)
    assert second.exit_code == 1
    assert "already holds a ledger" in second.stderr


def test_usage_errors(tmp_path):
    assert runner.invoke(app, ["init"]).exit_code == 2
    missing = runner.invoke(app, ["init", str(tmp_path / "nope.toml"), "--home", str(tmp_path)])
    assert missing.exit_code == 2
    assert "cannot read consortium file" in missing.stderr
    bad_member = runner.invoke(app, ["consortium", "example", "--member", "alice"])
    assert bad_member.exit_code == 2
    assert "expected NAME=HOME" in bad_member.stderr
