"""verify-chain's anchors: a truncated or replaced store fails against anything from outside it.

The attacker holds the store file: they drop the append-only triggers (they guard against bugs,
not people) and delete the last blocks, which leaves a shorter chain that is still internally
valid (here: undoing a member's removal), or they put a whole forged consortium with the same
member names in its place (every signature valid, under the attacker's keys). Without an anchor
from outside the store, both verify "valid"; each anchor must catch them.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3

import nacl.signing
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.errors import UsageError
from bcfl_cli.protocol.tx import TxKind
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.store.pin import read_pin
from bcfl_cli.verify import verify_chain
from bcfl_cli.verify.anchor import Anchors, TrustedHead
from tests.chain import factories
from tests.chain.factories import did_for, drop_triggers, realistic_chain

runner = CliRunner()


def _verify(home, *args):
    result = runner.invoke(
        app, ["verify-chain", "--home", str(home.root), "--json", *map(str, args)]
    )
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def _chain_with_removal(root):
    """realistic_chain, then two validators remove erin: blocks 6 and 7."""
    c = realistic_chain(root)
    for name in ("alice", "bob"):
        c.commit([c.tx(name, TxKind.REMOVE_MEMBER, {"member": did_for("erin"), "reason": "gone"})])
    assert c.state.members[did_for("erin")].status == "removed"
    c.ledger.close()
    return c


def _truncate(home, keep: int) -> None:
    """What an attacker with the file does: drop the triggers, delete every block above keep."""
    conn = drop_triggers(home.store_file)
    conn.execute("DELETE FROM txs WHERE height > ?", (keep,))
    conn.execute("DELETE FROM blocks WHERE height > ?", (keep,))
    conn.close()


def test_truncated_store_still_verifies_without_an_anchor(tmp_path):
    """The hole this closes: the shorter chain is internally valid (erin is a member again)."""
    c = _chain_with_removal(tmp_path)
    _truncate(c.home, 5)
    with Ledger.open(c.home) as ledger:
        report = verify_chain(ledger, workers=1)
    assert report.ok and report.height == 5


def test_truncated_store_fails_against_the_home_pin(tmp_path):
    c = _chain_with_removal(tmp_path)
    code, report = _verify(c.home)  # the member verifies: the pin moves to 7
    assert code == 0 and report["pin"] == "advanced"
    assert read_pin(c.home.pin_file).height == 7
    _truncate(c.home, 5)
    code, report = _verify(c.home)
    assert code == 1
    assert report["fault"]["code"] == "below_pinned_head"
    assert report["fault"]["height"] == 6
    assert {"anchor": "head", "source": "pin", "height": 7, "ok": False}.items() <= {
        **report["anchors"][-1]
    }.items()
    assert read_pin(c.home.pin_file).height == 7  # a failed verify never moves the pin


def test_truncated_store_fails_with_trusted_head(tmp_path):
    c = _chain_with_removal(tmp_path)
    top = c.blocks[-1]
    kept = c.blocks[4]  # height 5
    _truncate(c.home, 5)
    code, report = _verify(c.home, "--no-pin", "--trusted-head", f"{top.height}:{top.hash}")
    assert code == 1 and report["fault"]["code"] == "below_trusted_head"
    assert report["pin"] == "not used"
    code, report = _verify(c.home, "--no-pin", "--trusted-head", f"5:{kept.hash}")
    assert code == 0 and report["anchors"][0]["ok"] is True
    code, report = _verify(c.home, "--no-pin", "--trusted-head", f"5:{top.hash}")
    assert code == 1 and report["fault"]["code"] == "trusted_head_mismatch"


def _forged_home(root, monkeypatch):
    """The same member names and chain shape under the attacker's own keys and genesis."""

    def attacker_key(name: str) -> nacl.signing.SigningKey:
        return nacl.signing.SigningKey(hashlib.sha256(b"forged:" + name.encode()).digest())

    with monkeypatch.context() as m:
        m.setattr(factories, "key_for", attacker_key)
        forged = _chain_with_removal(root)
    return forged


def test_forged_consortium_fails_with_genesis_and_with_the_home_pin(tmp_path, monkeypatch):
    real = _chain_with_removal(tmp_path / "real")
    forged = _forged_home(tmp_path / "forged", monkeypatch)
    assert forged.genesis.hash != real.genesis.hash
    assert [m["name"] for m in forged.document["members"]] == [
        m["name"] for m in real.document["members"]
    ]
    # the member's home, with its store replaced by the forged one (the pin stays)
    forged.home.pin_file.write_bytes(real.home.pin_file.read_bytes())
    code, report = _verify(forged.home, "--no-pin")
    assert code == 0  # internally valid: only an anchor tells
    code, report = _verify(forged.home, "--no-pin", "--genesis", real.genesis.hash)
    assert code == 1 and report["fault"]["code"] == "untrusted_genesis"
    assert report["fault"]["height"] == 0
    code, report = _verify(forged.home)
    assert code == 1 and report["fault"]["code"] == "unpinned_genesis"
    assert read_pin(forged.home.pin_file).genesis == real.genesis.hash


def test_home_without_a_pin_is_pinned_on_first_use(tmp_path):
    """Upgrade path: a home made before pins verifies, is pinned, and is protected from then."""
    c = _chain_with_removal(tmp_path)
    c.home.pin_file.unlink()
    human = runner.invoke(app, ["verify-chain", "--home", str(c.home.root)])
    assert human.exit_code == 0, human.output
    assert "trusted on first use" in " ".join(human.stderr.split())
    assert read_pin(c.home.pin_file).height == 7
    c.home.pin_file.unlink()
    code, report = _verify(c.home)
    assert code == 0 and report["pin"] == "created"
    _truncate(c.home, 5)
    code, report = _verify(c.home)
    assert code == 1 and report["fault"]["code"] == "below_pinned_head"


def test_a_garbled_pin_fails_closed(tmp_path):
    """Turning the pin into garbage must not buy trust-on-first-use again."""
    c = _chain_with_removal(tmp_path)
    c.home.pin_file.write_text("{not json")
    code, report = _verify(c.home)
    assert code == 1 and report["fault"]["code"] == "pin_unreadable"
    assert report["pin"] == "unreadable"


def test_trusted_head_usage_errors(tmp_path):
    c = _chain_with_removal(tmp_path)
    for bad in ("7", "x:" + "0" * 64, "7:abc", "-1:" + "0" * 64, "7:" + "g" * 64):
        result = runner.invoke(
            app, ["verify-chain", "--home", str(c.home.root), "--trusted-head", bad]
        )
        assert result.exit_code == 2, (bad, result.output)
    result = runner.invoke(app, ["verify-chain", "--home", str(c.home.root), "--genesis", "abc"])
    assert result.exit_code == 2


def test_human_output_names_the_anchors(tmp_path):
    c = _chain_with_removal(tmp_path)
    result = runner.invoke(
        app,
        [
            "verify-chain",
            "--home",
            str(c.home.root),
            "--genesis",
            c.genesis.hash,
            "--trusted-head",
            f"3:{c.blocks[2].hash}",
        ],
    )
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    assert "genesis (--genesis) ok" in out and "head 3 (--trusted-head) ok" in out


@given(st.text(max_size=90))
def test_trusted_head_parse_is_a_verdict(text):
    try:
        head = TrustedHead.parse(text)
    except UsageError:
        return
    assert head.height >= 0 and len(head.hash) == 64


@given(st.integers(0, 10**17), st.binary(min_size=32, max_size=32))
def test_trusted_head_round_trip(height, digest):
    head = TrustedHead.parse(f"{height}:{digest.hex().upper()}")
    assert head == TrustedHead(height, digest.hex())


def test_anchors_refuse_a_malformed_genesis():
    with pytest.raises(UsageError):
        Anchors(genesis="zz")


def test_truncating_the_trigger_guarded_store_needs_the_triggers_dropped(tmp_path):
    """The triggers do stop an honest mistake; the attack above drops them first."""
    c = _chain_with_removal(tmp_path)
    conn = sqlite3.connect(c.home.store_file, isolation_level=None)
    with pytest.raises(sqlite3.DatabaseError):
        conn.execute("DELETE FROM blocks WHERE height > 5")
    conn.close()
