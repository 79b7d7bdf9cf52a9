"""Hardening of a node's home and stores against one member, a stranger or a slip of the
operator (issue 16, items 6, 8, 9 and 15), shown against real node processes.

One single-validator node (quorum 1 of 1), as in test_bad_input.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from bcfl_cli.demo.launcher import LocalConsortium, free_ports
from tests.faults.helpers import members, plan

pytestmark = [pytest.mark.network, pytest.mark.timeout(300)]

MIB = 1024 * 1024


@pytest.fixture
def node(tmp_path: Path) -> Iterator[LocalConsortium]:
    c = LocalConsortium(
        tmp_path / "c", members(["alice"]), plan(validators=1, min_updates=1, max_blob_bytes=MIB)
    )
    try:
        c.start("alice", train=False)
        c.wait_ready("alice", timeout=120)
        yield c
    finally:
        c.close()


def test_a_second_node_on_the_same_home_exits_1_and_changes_nothing(node: LocalConsortium) -> None:
    """Item 15: the second start fails at once with one clear line; the first runs on, its
    ``node.json`` untouched, and no block is appended twice (no "cannot append" in its log)."""
    alice = node.members["alice"]
    node_file = alice.home.node_dir / "node.json"
    before = node_file.read_text(encoding="utf-8")
    height = node.status("alice")["height"]
    (other_port,) = free_ports(1)
    second = node.run_cli(
        "node", "--home", str(alice.home.root), "--listen", f"127.0.0.1:{other_port}", timeout=120
    )
    assert second.returncode == 1, second.stderr
    assert "another bcfl node" in second.stderr
    assert f"pid {alice.proc.pid if alice.proc else ''}" in second.stderr
    assert "Traceback" not in second.stderr
    assert node_file.read_text(encoding="utf-8") == before
    assert json.loads(before)["pid"] == (alice.proc.pid if alice.proc else None)
    node.wait_height(height + 2, ["alice"], timeout=60)
    assert alice.running
    assert "cannot append" not in node.log("alice", tail=10**7)


def test_the_home_lock_dies_with_its_node(node: LocalConsortium) -> None:
    """After a SIGKILL the kernel has released the lock: the node starts again at once."""
    node.kill("alice")
    node.start("alice", train=False)
    node.wait_ready("alice", timeout=120)
    assert node.members["alice"].running
