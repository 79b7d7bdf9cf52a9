"""bcfl tls init / show through the real Typer app (issue 22)."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.home import Home
from bcfl_cli.identity import read_public_identity
from bcfl_cli.identity.tls_cert import pin_signature_valid, read_fingerprint
from bcfl_cli.protocol.crypto import public_key_from_did

runner = CliRunner()


def test_init_prints_a_signed_pin_then_show_reads_it(tmp_path, passphrase_env):
    home = tmp_path / "alice"
    made = runner.invoke(
        app, ["keygen", "--name", "alice", "--home", str(home), "--kdf", "interactive"]
    )
    assert made.exit_code == 0, made.output
    init = runner.invoke(app, ["tls", "init", "--home", str(home), "--json"])
    assert init.exit_code == 0, init.output
    pin = json.loads(init.stdout)
    did = read_public_identity(Home.resolve(home)).did
    assert pin["created"] is True
    assert pin_signature_valid(public_key_from_did(did), pin["fingerprint"], pin["sig"])
    assert pin["toml"] == f'tls = {{ fingerprint = "{pin["fingerprint"]}", sig = "{pin["sig"]}" }}'
    again = json.loads(runner.invoke(app, ["tls", "init", "--home", str(home), "--json"]).stdout)
    assert again["created"] is False and again["fingerprint"] == pin["fingerprint"]
    shown = runner.invoke(app, ["tls", "show", "--home", str(home), "--json"])
    assert json.loads(shown.stdout) == {"fingerprint": pin["fingerprint"], "next_fingerprint": None}
    human = runner.invoke(app, ["tls", "init", "--home", str(home)])
    assert "[[members]]" in human.stdout and pin["toml"] in human.stdout.replace("\n", "")
    assert read_fingerprint(Home.resolve(home)) == pin["fingerprint"]
