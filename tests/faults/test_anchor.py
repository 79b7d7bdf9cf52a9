"""verify-chain against real nodes: a truncated or replaced store fails ``--against`` a live peer.

Four validators commit a few blocks; two are then stopped, so the chain halts (2 of 4 is no
quorum) and the other two hold the same head. Alice stops too (her node writes the pin on the
way out); Bob keeps serving. Alice's own store verifies against Bob. A copy of it with its last
blocks deleted (triggers dropped first, as an attacker with the file would) fails against Bob,
against the pin her node kept, and against a trusted head; a forged consortium's store fails
against Bob; a peer that is not there is a failed comparison, not a pass.
"""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.demo.launcher import free_ports
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Block
from bcfl_cli.store.pin import read_pin
from tests.chain.factories import drop_triggers, realistic_chain
from tests.faults.helpers import MakeConsortium, members, plan, wait_until

pytestmark = [pytest.mark.network]

NAMES = ["alice", "bob", "carol", "dave"]
runner = CliRunner()


def _verify(home: Home, *args: str) -> tuple[int, dict]:
    result = runner.invoke(app, ["verify-chain", "--home", str(home.root), "--json", *args])
    assert result.exit_code in (0, 1), result.output
    return result.exit_code, json.loads(result.stdout)


def _halted_pair(c) -> int:
    """Alice and Bob at the same head, with nobody able to commit past it."""
    heights = c.heights(["alice", "bob"])
    return heights["alice"] if len(set(heights.values())) == 1 else -1


def test_truncated_or_forged_store_fails_against_a_live_peer(
    consortium: MakeConsortium, tmp_path
) -> None:
    c = consortium(members(NAMES), plan(min_updates=3, deadline_blocks=15))
    c.start_all(train=False, timeout=120)
    wait_until(lambda: min(c.heights().values()) >= 5, 120, "five blocks everywhere", c)
    c.stop("carol")
    c.stop("dave")
    wait_until(lambda: _halted_pair(c) >= 5, 60, "alice and bob on one halted head", c)
    top = _halted_pair(c)
    c.stop("alice")
    bob = c.members["bob"].url
    assert c.heights(["bob"])["bob"] == top
    alice = c.members["alice"].home
    head = Block.from_dict(c.blocks("bob", top, 1)[0])
    assert read_pin(alice.pin_file).height == top  # her node pinned its head when it stopped

    code, report = _verify(alice, "--against", bob)
    assert code == 0, report["fault"]
    peer = report["anchors"][-1]
    assert (peer["anchor"], peer["ok"], peer["height"], peer["peer_height"]) == (
        "peer",
        True,
        top,
        top,
    )

    # the attacker's copy: the last two blocks deleted
    copy = Home.resolve(c.copy_home("alice", tmp_path / "truncated"))
    conn = drop_triggers(copy.store_file)
    conn.execute("DELETE FROM txs WHERE height > ?", (top - 2,))
    conn.execute("DELETE FROM blocks WHERE height > ?", (top - 2,))
    conn.close()
    code, report = _verify(copy, "--no-pin")
    assert code == 0  # no anchor: the shorter chain is internally valid
    code, report = _verify(copy, "--no-pin", "--against", bob)
    assert code == 1 and report["fault"]["code"] == "behind_peer", report["fault"]
    assert report["fault"]["height"] == top - 1
    code, report = _verify(copy)
    assert code == 1 and report["fault"]["code"] == "below_pinned_head"
    code, report = _verify(copy, "--no-pin", "--trusted-head", f"{top}:{head.hash}")
    assert code == 1 and report["fault"]["code"] == "below_trusted_head"

    # a forged consortium's store (another genesis) in a home of its own
    forged = realistic_chain(tmp_path / "forged")
    forged.ledger.close()
    code, report = _verify(forged.home, "--against", bob)
    assert code == 1 and report["fault"]["code"] == "peer_genesis_differs"

    # nobody listening: the comparison proves nothing, so it fails
    dead = f"http://127.0.0.1:{free_ports(1)[0]}"
    code, report = _verify(alice, "--against", dead)
    assert code == 1 and report["fault"]["code"] == "peer_unverifiable"
    assert read_pin(alice.pin_file).height == top
    shutil.rmtree(copy.root)
