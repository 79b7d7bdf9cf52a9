"""``--store-url`` through the commands: init records it, a real node commits blocks into
PostgreSQL, verify-chain finds the store by the home, and no output shows the password."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time

import httpx
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.demo.launcher import MemberPlan, bcfl_command, consortium_toml, free_ports
from bcfl_cli.home import Home
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.store.location import record_store_url
from tests.conftest import PASSPHRASE
from tests.faults.helpers import plan
from tests.store_backends import hides_password, secret_of

runner = CliRunner()
T = "1767225600000"
NODE_START_TIMEOUT_S = 120
TARGET_HEIGHT = 3


def _config(tmp_path, did: str, name: str = "alice"):
    """A one-validator consortium whose founder is ``name`` (``did``)."""
    path = tmp_path / f"{name}.toml"
    genesis = plan(validators=1, min_updates=1)
    path.write_text(consortium_toml(genesis, [(MemberPlan(name), did)]), encoding="utf-8")
    return path


def _env() -> dict[str, str]:
    return {**os.environ, "BCFL_PASSPHRASE": PASSPHRASE.decode(), "PYTHONUNBUFFERED": "1"}


def test_init_records_the_url_and_verify_chain_finds_it(tmp_path, make_home, postgres_url):
    alice = make_home("alice")
    config = _config(tmp_path, alice.did)
    args = ["init", str(config), "--home", str(alice.root), "--time-ms", T]
    result = runner.invoke(app, [*args, "--json", "--store-url", postgres_url])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    secret = secret_of(postgres_url)
    assert secret not in result.output and report["store"].startswith("postgresql+")
    assert "***" in report["store"] or not hides_password(postgres_url)
    assert not alice.home.store_file.exists()

    again = runner.invoke(app, [*args, "--store-url", postgres_url])  # one database, one ledger
    assert again.exit_code == 1 and "already holds a ledger" in again.stderr
    assert secret not in again.output
    elsewhere = runner.invoke(app, [*args, "--store-url", f"sqlite:///{tmp_path / 'x.sqlite'}"])
    assert elsewhere.exit_code == 1 and "already keeps its ledger" in elsewhere.stderr
    assert secret not in elsewhere.output

    verified = runner.invoke(app, ["verify-chain", "--home", str(alice.root), "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["ok"] is True

    # another home (e.g. an auditor's, with a copy of the blobs) reads the same database
    # without recording it
    auditor = tmp_path / "auditor"
    shutil.copytree(alice.home.blob_dir, Home.resolve(auditor).blob_dir)
    read = runner.invoke(
        app, ["verify-chain", "--home", str(auditor), "--store-url", postgres_url, "--no-pin"]
    )
    assert read.exit_code == 0, read.output
    assert not Home.resolve(auditor).has_ledger

    # ... with a role that may only read (docs/OPERATIONS.md, "PostgreSQL store")
    reader = make_url(postgres_url).database + "_reader"
    admin = create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE ROLE "{reader}" LOGIN'))
        conn.execute(text(f'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{reader}"'))
    try:
        url = make_url(postgres_url).set(username=reader).render_as_string(hide_password=False)
        read = runner.invoke(
            app, ["verify-chain", "--home", str(auditor), "--store-url", url, "--no-pin"]
        )
        assert read.exit_code == 0, read.output
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP OWNED BY "{reader}"'))
            conn.execute(text(f'DROP ROLE "{reader}"'))
        admin.dispose()


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u:hunter2@db/bcfl", "unsupported database 'mysql'"),
        ("postgresql://u:hunter2@db", "name the database"),
        ("not a url", "not a database URL"),
    ],
)
def test_bad_store_urls_are_usage_errors(tmp_path, url, expected):
    result = runner.invoke(app, ["verify-chain", "--home", str(tmp_path / "h"), "--store-url", url])
    assert result.exit_code == 2 and expected in result.stderr
    assert "hunter2" not in result.output


@pytest.mark.network
@pytest.mark.lone_node  # one node process: it runs beside the consortia
def test_a_node_on_postgresql_commits_blocks(tmp_path, make_home, postgres_url):
    """``bcfl node --store-url postgresql+psycopg://...``: a lone validator commits blocks into
    the database, stops, and verify-chain checks them through the home's recorded URL."""
    alice = make_home("alice")
    config = _config(tmp_path, alice.did)
    init = runner.invoke(app, ["init", str(config), "--home", str(alice.root), "--time-ms", T])
    assert init.exit_code == 0, init.output  # on SQLite first: the node's URL must be refused
    refused = runner.invoke(  # fails before the key is read: in-process is enough
        app, ["node", "--home", str(alice.root), "--store-url", postgres_url]
    )
    assert refused.exit_code == 1 and "no ledger at" in refused.stderr
    assert secret_of(postgres_url) not in refused.output

    bob = make_home("bob")
    home = bob.home
    config = _config(tmp_path, bob.did, "bob")
    created = runner.invoke(
        app, ["init", str(config), "--home", str(home.root), "--store-url", postgres_url]
    )
    assert created.exit_code == 0, created.output
    home.store_url_file.unlink()  # the node adopts the database itself, from its option
    port = free_ports(1)[0]
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [
                *bcfl_command(),
                "node",
                "--home",
                str(home.root),
                "--store-url",
                postgres_url,
                "--listen",
                f"127.0.0.1:{port}",
                "--empty-block-interval",
                "0.2",
                "--empty-blocks",
            ],
            env=_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        height = -1
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        with httpx.Client(timeout=5.0) as http:
            while height < TARGET_HEIGHT and time.monotonic() < deadline:
                assert proc.poll() is None, log.read_text(errors="replace")[-3000:]
                with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                    height = int(http.get(f"http://127.0.0.1:{port}/v1/status").json()["height"])
                time.sleep(0.3)
        assert height >= TARGET_HEIGHT, log.read_text(errors="replace")[-3000:]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    assert not home.store_file.exists() and home.store_url_file.exists()
    secret = secret_of(postgres_url)
    assert secret not in log.read_text(errors="replace")
    node_log = home.node_dir / "node.log"
    assert not node_log.exists() or secret not in node_log.read_text(errors="replace")
    with Ledger.open(home) as ledger:
        assert ledger.height >= TARGET_HEIGHT
    verified = runner.invoke(app, ["verify-chain", "--home", str(home.root), "--json"])
    assert verified.exit_code == 0, verified.output
    assert json.loads(verified.stdout)["height"] >= TARGET_HEIGHT


def test_a_member_joins_into_postgresql(tmp_path, make_home, postgres_url):
    """``bcfl join --store-url`` records the URL, then joins: the ledger the join creates (the
    pinned genesis) is the database's, and a second join finds it there (node in-process)."""
    import bcfl_cli.client as ops
    from bcfl_cli.wire.refusal import Refusal
    from tests.node._node_harness import LocalNode

    local = LocalNode(tmp_path / "consortium")
    try:
        erin = make_home("erin")
        record_store_url(erin.home, postgres_url)
        with local.api(erin.identity.signing_key) as api:
            remote = ops.fetch_genesis(api)
            outcome = ops.join_consortium(
                erin.home,
                erin.identity.signing_key,
                api,
                remote,
                name="erin",
                roles=["trainer"],
                power=0,
            )
            assert outcome.ledger_created
            # again: the pin stage finds the ledger in the database (no second create), and
            # the node refuses the request as pending
            with pytest.raises(Refusal, match="pending"):
                ops.join_consortium(
                    erin.home,
                    erin.identity.signing_key,
                    api,
                    remote,
                    name="erin",
                    roles=["trainer"],
                    power=0,
                )
    finally:
        local.close()
    assert not erin.home.store_file.exists()
    with Ledger.open(erin.home) as ledger:
        assert ledger.genesis_hash == local.node.genesis_hash
        assert secret_of(postgres_url) not in ledger.display_url
