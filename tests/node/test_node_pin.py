"""The node keeps the home's pin: it moves it forward after durable appends, refuses a store
the pin says was replaced or rewritten, and starts (to sync back) on one that is only short."""

from __future__ import annotations

import logging

import pytest

from bcfl_cli.errors import StoreError
from bcfl_cli.identity import Identity
from bcfl_cli.node.server import Node, NodeOptions
from bcfl_cli.store.pin import Pin, read_pin, write_pin
from tests.node._node_harness import LocalNode, key


def _open(home) -> Node:
    return Node(home, Identity("alice", key("alice")), NodeOptions(host="testserver", port=80))


def _close(node: Node) -> None:
    node.ledger.close()
    node.guard.close()
    node._worker.shutdown(wait=False)


@pytest.fixture
def mined(tmp_path):
    """A node's home with two blocks past the genesis; the node closed."""
    harness = LocalNode(tmp_path)
    pin_file = harness.home.pin_file
    assert read_pin(pin_file).height == 0  # bcfl init pinned the genesis
    assert harness.mine() is not None
    harness.open_rounds = False
    assert harness.node.state.height == 1
    assert read_pin(pin_file).height == 1  # the first block after start is pinned at once
    genesis, head = harness.node.genesis_hash, harness.node.state.head_hash
    harness.close()
    yield harness.home, genesis, head


def test_the_node_pins_its_head(mined):
    home, genesis, head = mined
    assert read_pin(home.pin_file) == Pin(genesis, 1, head)


def test_a_replaced_store_is_refused(mined):
    home, genesis, head = mined
    write_pin(home.pin_file, Pin("cc" * 32, 1, head))
    with pytest.raises(StoreError, match="replaced"):
        _open(home)


def test_a_rewritten_store_is_refused(mined):
    home, genesis, head = mined
    write_pin(home.pin_file, Pin(genesis, 1, "cc" * 32))
    with pytest.raises(StoreError, match="rewritten"):
        _open(home)


def test_a_short_store_starts_and_the_pin_stays(mined, caplog):
    home, genesis, head = mined
    write_pin(home.pin_file, Pin(genesis, 40, "cc" * 32))
    with caplog.at_level(logging.WARNING):
        node = _open(home)
    try:
        assert node.chain.pin.behind == 39
        assert "below the head pinned" in caplog.text
    finally:
        _close(node)
    assert read_pin(home.pin_file) == Pin(genesis, 40, "cc" * 32)


def test_a_home_without_a_pin_is_pinned_at_start(mined, caplog):
    home, genesis, head = mined
    home.pin_file.unlink()
    with caplog.at_level(logging.WARNING):
        node = _open(home)
    _close(node)
    assert "on first use" in caplog.text
    assert read_pin(home.pin_file) == Pin(genesis, 1, head)
