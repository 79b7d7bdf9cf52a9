"""bcfl keygen / bcfl identity show through the real Typer app."""

from __future__ import annotations

import json
import stat

import pytest
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.home import Home
from bcfl_cli.identity import load_identity, read_public_identity
from bcfl_cli.protocol.crypto import is_did
from tests.conftest import PASSPHRASE

runner = CliRunner()


def _keygen(home, *extra, env=None):
    args = ["keygen", "--name", "alice", "--home", str(home), "--kdf", "interactive", *extra]
    return runner.invoke(app, args, env=env)


def test_keygen_then_show(tmp_path, passphrase_env):
    home = tmp_path / "alice"
    made = _keygen(home, "--json")
    assert made.exit_code == 0, made.output
    created = json.loads(made.stdout)
    assert is_did(created["did"]) and created["name"] == "alice"
    assert stat.S_IMODE((home / "identity.key").stat().st_mode) == 0o600
    assert load_identity(Home.resolve(home), passphrase_env).did == created["did"]

    shown = runner.invoke(app, ["identity", "show", "--home", str(home), "--json"])
    assert shown.exit_code == 0
    assert json.loads(shown.stdout) == created

    human = runner.invoke(app, ["identity", "show", "--home", str(home)])
    assert human.exit_code == 0
    assert created["did"] in human.stdout  # on one line, not turned into an emoji
    assert created["public_key"] in human.stdout


def test_show_reads_bcfl_home(tmp_path, passphrase_env, monkeypatch):
    _keygen(tmp_path / "h")
    monkeypatch.setenv("BCFL_HOME", str(tmp_path / "h"))
    shown = runner.invoke(app, ["identity", "show", "--json"])
    assert json.loads(shown.stdout)["name"] == "alice"


def test_keygen_refuses_overwrite_then_force(tmp_path, passphrase_env):
    home = tmp_path / "alice"
    first = json.loads(_keygen(home, "--json").stdout)["did"]
    again = _keygen(home)
    assert again.exit_code == 1
    assert "error: an identity already exists" in again.stderr
    assert "--force" in again.stderr
    assert "Traceback" not in again.output
    forced = _keygen(home, "--force", "--json")
    assert forced.exit_code == 0
    assert json.loads(forced.stdout)["did"] != first


def test_passphrase_file(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("from a file\n")
    home = tmp_path / "alice"
    assert _keygen(home, "--passphrase-file", str(pw)).exit_code == 0
    assert load_identity(Home.resolve(home), b"from a file").name == "alice"


def test_no_passphrase_without_terminal_is_a_clean_error(tmp_path):
    result = _keygen(tmp_path / "alice")
    assert result.exit_code == 1
    assert "no passphrase given" in result.stderr
    assert "BCFL_PASSPHRASE" in result.stderr
    assert not (tmp_path / "alice" / "identity.key").exists()


def test_show_without_identity(tmp_path):
    result = runner.invoke(app, ["identity", "show", "--home", str(tmp_path / "none")])
    assert result.exit_code == 1
    assert "error: no identity" in result.stderr
    assert "bcfl keygen" in result.stderr


def test_check_unlocks_and_wrong_passphrase_is_one_line_exit_1(make_home, monkeypatch):
    member = make_home("alice")
    monkeypatch.setenv("BCFL_PASSPHRASE", PASSPHRASE.decode())
    ok = runner.invoke(app, ["identity", "check", "--home", str(member.root), "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["unlocked"] is True

    monkeypatch.setenv("BCFL_PASSPHRASE", "wrong")
    bad = runner.invoke(app, ["identity", "check", "--home", str(member.root)])
    assert bad.exit_code == 1
    lines = [line for line in bad.stderr.splitlines() if line.strip()]
    assert lines == [f"error: wrong passphrase for {member.home.key_file}"]
    assert bad.stdout == ""


@pytest.mark.parametrize(
    "args",
    [
        ["keygen", "--bogus"],
        ["keygen", "--kdf", "weak"],
        ["identity"],
        ["identity", "show", "extra"],
        ["nosuchcommand"],
    ],
)
def test_usage_errors_exit_2(args, tmp_path, passphrase_env):
    result = runner.invoke(app, [*args, "--home", str(tmp_path)] if args[0] == "keygen" else args)
    assert result.exit_code == 2, result.output
    assert not (tmp_path / "identity.key").exists()


def test_keygen_help_hides_the_kdf_option():
    result = runner.invoke(app, ["keygen", "--help"])
    assert result.exit_code == 0
    assert "--passphrase-file" in result.stdout
    assert "--kdf" not in result.stdout


def test_default_kdf_is_moderate(tmp_path, passphrase_env):
    """The default protects real keys with libsodium's moderate limits (256 MiB, 3 passes)."""
    home = tmp_path / "real"
    result = runner.invoke(app, ["keygen", "--name", "r", "--home", str(home)])
    assert result.exit_code == 0, result.output
    kdf = json.loads((home / "identity.key").read_text())["kdf"]
    assert (kdf["opslimit"], kdf["memlimit"]) == (3, 256 * 1024 * 1024)
    assert read_public_identity(Home.resolve(home)).name == "r"
