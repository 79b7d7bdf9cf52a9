"""bcfl verify-chain / log / inspect through the real Typer app."""

from __future__ import annotations

import json

from sqlalchemy import text
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.home import Home
from bcfl_cli.store.db import make_engine
from tests.chain.factories import realistic_chain

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_verify_chain_ok_and_json(tmp_path, store_backend):
    store_backend.use(Home.resolve(tmp_path))
    c = realistic_chain(tmp_path)
    c.ledger.close()
    human = _run("verify-chain", "--home", tmp_path)
    assert human.exit_code == 0, human.output
    assert "chain valid: height 5" in human.stdout
    report = json.loads(_run("verify-chain", "--home", tmp_path, "--json").stdout)
    assert report["ok"] is True and report["height"] == 5 and report["fault"] is None


def test_verify_chain_names_the_fault(tmp_path, store_backend):
    store_backend.use(Home.resolve(tmp_path))
    c = realistic_chain(tmp_path)
    c.ledger.close()
    update = c.blocks[3].txs[0]
    engine = make_engine(c.home.store_url)  # the owner of the database drops the trigger
    trigger = "txs_append_only ON txs" if store_backend.is_postgres else "txs_no_update"
    with engine.begin() as conn:
        conn.execute(text(f"DROP TRIGGER {trigger}"))
        stored = conn.execute(text("SELECT body FROM txs WHERE hash=:h"), {"h": update.hash})
        body = json.loads(stored.scalar_one())
        body["sig"] = "0" * 128
        conn.execute(
            text("UPDATE txs SET body=:b WHERE hash=:h"),
            {"b": json.dumps(body, separators=(",", ":"), sort_keys=True), "h": update.hash},
        )
    engine.dispose()
    result = _run("verify-chain", "--home", tmp_path, "--json")
    assert result.exit_code == 1
    fault = json.loads(result.stdout)["fault"]
    assert (fault["height"], fault["tx"], fault["code"]) == (4, update.hash, "bad_tx_signature")
    human = _run("verify-chain", "--home", tmp_path)
    assert human.exit_code == 1
    assert "bad_tx_signature" in human.output and update.hash in human.output


def test_verify_chain_without_store_is_an_error(tmp_path):
    result = _run("verify-chain", "--home", tmp_path / "none")
    assert result.exit_code == 1
    assert "bcfl init" in result.output


def test_log_and_inspect(tmp_path):
    c = realistic_chain(tmp_path)
    c.ledger.close()
    log = _run("log", "--home", tmp_path, "--limit", 3)
    assert log.exit_code == 0, log.output
    assert "aggregate×1" in log.stdout and "carol" in log.stdout
    rows = json.loads(_run("log", "--home", tmp_path, "--json").stdout)
    assert [r["height"] for r in rows] == [5, 4, 3, 2, 1, 0]
    assert rows[1]["txs"] == {"update": 3, "validation": 3}

    block = _run("inspect", "4", "--home", tmp_path)
    assert block.exit_code == 0, block.output
    assert "norm_exceeded" in block.stdout and "erin" in block.stdout
    by_hash = json.loads(_run("inspect", c.blocks[3].hash, "--home", tmp_path, "--json").stdout)
    assert by_hash["header"]["height"] == 4 and by_hash["hash"] == c.blocks[3].hash
    tx = c.blocks[3].txs[2]
    shown = json.loads(_run("inspect", tx.hash[:12], "--home", tmp_path, "--json").stdout)
    assert (shown["hash"], shown["height"], shown["index"]) == (tx.hash, 4, 2)
    assert shown["signature_valid"] is True
    human = _run("inspect", tx.hash, "--home", tmp_path)
    assert "erin" in human.stdout and "body.num_samples" in human.stdout
    assert _run("inspect", "99", "--home", tmp_path).exit_code == 2
    assert _run("inspect", "zz-not-hex", "--home", tmp_path).exit_code == 2
    assert _run("inspect", "f" * 64, "--home", tmp_path).exit_code == 2


def test_usage_errors_exit_2(tmp_path):
    assert _run("verify-chain", "--bogus").exit_code == 2
    assert _run("log", "--limit", "0", "--home", tmp_path).exit_code == 2


def test_inspect_reads_an_all_digit_hash_prefix_past_the_head_as_a_prefix(tmp_path, monkeypatch):
    # about 1 in 280 twelve-hex-digit prefixes is all digits; such a prefix used to be read
    # as a height past the head and refused (a flaky failure of the test above)
    c = realistic_chain(tmp_path)
    c.ledger.close()
    tx = c.blocks[3].txs[2]
    prefix = "123456789012"
    from bcfl_cli.store.ledger import Ledger

    real = Ledger.find_tx_hashes
    monkeypatch.setattr(
        Ledger,
        "find_tx_hashes",
        lambda self, p, **kw: [tx.hash] if p == prefix else real(self, p, **kw),
    )
    shown = json.loads(_run("inspect", prefix, "--home", tmp_path, "--json").stdout)
    assert shown["hash"] == tx.hash
    # a short number past the head is still a height
    missing = _run("inspect", "99", "--home", tmp_path)
    assert missing.exit_code != 0 and "height 99" in missing.output
    # a long one that is neither says both
    neither = _run("inspect", "999999", "--home", tmp_path)
    assert neither.exit_code != 0
    assert "height 999999" in neither.output and "starts with 999999" in neither.output
