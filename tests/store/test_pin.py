"""HOME/pin.json: strict reading, atomic writes, only forward, and the node's keeper."""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bcfl_cli.errors import StoreError
from bcfl_cli.store.pin import (
    MAX_PIN_BYTES,
    Pin,
    PinKeeper,
    advance_pin,
    pin_genesis,
    read_pin,
    write_pin,
)
from tests.chain.factories import make_consortium

G = "aa" * 32
H = "bb" * 32


def test_round_trip_and_no_temporary_left(tmp_path):
    path = tmp_path / "pin.json"
    assert read_pin(path) is None
    write_pin(path, Pin(G, 7, H))
    assert read_pin(path) == Pin(G, 7, H)
    assert [p.name for p in tmp_path.iterdir()] == ["pin.json"]
    assert path.stat().st_mode & 0o777 == 0o600


def test_only_forward_and_never_across_consortia(tmp_path):
    path = tmp_path / "pin.json"
    first = pin_genesis(path, G)
    assert first == Pin(G, 0, G)
    pin = advance_pin(path, first, G, 9, H)
    assert read_pin(path) == Pin(G, 9, H)
    assert advance_pin(path, pin, G, 4, "cc" * 32) == pin
    assert read_pin(path) == Pin(G, 9, H)
    with pytest.raises(StoreError):
        advance_pin(path, pin, "dd" * 32, 10, H)
    with pytest.raises(StoreError, match="pins consortium"):
        pin_genesis(path, "dd" * 32)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "[]",
        '{"v":1}',
        json.dumps({"v": 2, "genesis": G, "height": 1, "head": H}),
        json.dumps({"v": 1, "genesis": G, "height": -1, "head": H}),
        json.dumps({"v": 1, "genesis": G, "height": True, "head": H}),
        json.dumps({"v": 1, "genesis": G, "height": 0, "head": H}),  # height 0 is the genesis
        json.dumps({"v": 1, "genesis": G.upper(), "height": 1, "head": H}),
        json.dumps({"v": 1, "genesis": G, "height": 1, "head": H, "x": 1}),
        '{"v":1,"v":1,"genesis":"' + G + '","height":1,"head":"' + H + '"}',
        "[" * 100_000,
        " " * (MAX_PIN_BYTES + 1),
    ],
)
def test_malformed_pins_are_refused(tmp_path, text):
    path = tmp_path / "pin.json"
    path.write_text(text)
    with pytest.raises(StoreError):
        read_pin(path)


@given(st.binary(max_size=300))
def test_any_bytes_are_a_pin_or_a_store_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("pin") / "pin.json"
    path.write_bytes(data)
    with contextlib.suppress(StoreError):
        read_pin(path)


def test_a_new_ledger_pins_its_genesis_and_refuses_another_consortiums_pin(tmp_path):
    c = make_consortium(tmp_path / "a")
    assert read_pin(c.home.pin_file) == Pin(c.genesis.hash, 0, c.genesis.hash)
    c.ledger.close()
    other = tmp_path / "b"
    other.mkdir()
    (other / "pin.json").write_bytes(c.home.pin_file.read_bytes())
    with pytest.raises(StoreError, match="pins consortium"):
        make_consortium(other, initial_bytes=b"another consortium")
    assert not (other / "chain.sqlite").exists()


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keeper_follows_the_node_at_most_every_interval(tmp_path):
    path = tmp_path / "pin.json"
    pin_genesis(path, G)
    clock = Clock()
    keeper = PinKeeper(path, G, 0, lambda h: G, interval_s=5.0, clock=clock)
    keeper.flush()
    keeper.note(1, "01" * 32)  # the first note after start writes
    assert read_pin(path).height == 1
    clock.now = 1.0
    keeper.note(2, "02" * 32)
    keeper.note(3, "03" * 32)
    assert read_pin(path).height == 1  # within the interval: not yet
    clock.now = 6.0
    keeper.note(4, "04" * 32)
    assert read_pin(path) == Pin(G, 4, "04" * 32)
    clock.now = 7.0
    keeper.note(5, "05" * 32)
    keeper.flush()  # on close
    assert read_pin(path) == Pin(G, 5, "05" * 32)


def test_keeper_refuses_a_replaced_or_rewritten_store_and_reports_a_short_one(tmp_path):
    path = tmp_path / "pin.json"
    write_pin(path, Pin(G, 5, H))
    with pytest.raises(StoreError, match="replaced"):
        PinKeeper(path, "cc" * 32, 9, lambda h: H)
    with pytest.raises(StoreError, match="rewritten"):
        PinKeeper(path, G, 9, lambda h: "cc" * 32)
    short = PinKeeper(path, G, 3, lambda h: "cc" * 32)
    assert short.behind == 2
    short.note(4, "cc" * 32)
    short.flush()
    assert read_pin(path) == Pin(G, 5, H)  # never backward
    fine = PinKeeper(path, G, 9, lambda h: H)
    assert fine.behind == 0


def test_keeper_pins_a_home_without_a_pin_on_first_use(tmp_path):
    path = tmp_path / "pin.json"
    keeper = PinKeeper(path, G, 3, lambda h: H)
    assert keeper.pin is None
    keeper.flush()
    assert read_pin(path) == Pin(G, 3, H)


def test_a_stale_writer_cannot_move_the_pin_back(tmp_path):
    """verify-chain read the pin at 0, the node moved it to 9 meanwhile: 5 must not win."""
    path = tmp_path / "pin.json"
    stale = pin_genesis(path, G)
    advance_pin(path, stale, G, 9, H)  # the node
    assert advance_pin(path, stale, G, 5, "cc" * 32) == Pin(G, 9, H)  # verify-chain
    assert read_pin(path) == Pin(G, 9, H)
