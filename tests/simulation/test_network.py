"""The simulated network: every delay, drop and cut follows from the seed, on a logical clock."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import UsageError
from bcfl_cli.simulation.network import Network, NetworkConfig, Partition
from bcfl_cli.simulation.options import (
    Crash,
    SimOptions,
    parse_crash,
    parse_delay,
    parse_partition,
)


def _trace(seed: int, config: NetworkConfig) -> list[tuple[int, int, int, str]]:
    net = Network(5, config, seed)
    for i in range(5):
        net.broadcast(i, f"hello from {i}")
    net.schedule(30, "tick", 0)
    for i in range(5):
        net.send(i, (i + 1) % 5, f"late {i}")
    out = []
    while (event := net.next_event()) is not None:
        out.append((event.at_ms, event.target, event.seq, str(event.payload)))
    return out


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), drop=st.sampled_from([0.0, 0.3]))
def test_same_seed_same_deliveries(seed: int, drop: float) -> None:
    config = NetworkConfig(delay_ms=(1, 50), drop=drop)
    assert _trace(seed, config) == _trace(seed, config)


def test_delays_within_bounds_and_time_never_goes_back() -> None:
    net = Network(4, NetworkConfig(delay_ms=(10, 40)), seed=3)
    net.broadcast(0, "m")
    times = []
    while (event := net.next_event()) is not None:
        times.append(event.at_ms)
    assert len(times) == 3
    assert all(10 <= t <= 40 for t in times)
    assert times == sorted(times)


def test_drops_follow_the_rate_and_the_seed() -> None:
    net = Network(2, NetworkConfig(drop=0.25), seed=11)
    delivered = sum(net.send(0, 1, i) for i in range(4000))
    assert 2800 < delivered < 3200
    again = Network(2, NetworkConfig(drop=0.25), seed=11)
    assert sum(again.send(0, 1, i) for i in range(4000)) == delivered


def test_partition_cuts_across_sides_only_while_active() -> None:
    cut = Partition(100, 200, frozenset({0, 1}))
    net = Network(4, NetworkConfig(partitions=(cut,)), seed=0)
    net.schedule(150, "tick", 0)
    assert net.send(0, 2, "before")  # t = 0: not yet
    net.next_event()  # the delivery
    net.next_event()  # t = 150
    assert not net.send(0, 2, "across")
    assert net.send(0, 1, "same side")
    assert net.stats.cut == 1


def test_a_down_member_neither_sends_nor_receives() -> None:
    net = Network(3, NetworkConfig(), seed=0)
    net.send(0, 1, "queued")
    net.down.add(1)
    assert net.next_event() is None  # the message to the member that went down is lost
    assert not net.send(1, 2, "from the dead")


def test_options_parse_and_refuse() -> None:
    assert parse_crash("2@500") == Crash(2, 500, None)
    assert parse_crash("2@500-900") == Crash(2, 500, 900)
    assert parse_partition("0-1000:1,2") == Partition(0, 1000, frozenset({1, 2}))
    assert parse_delay("5-20") == (5, 20)
    for bad in ("x", "2@", "2@a-b"):
        with pytest.raises(UsageError):
            parse_crash(bad)
    with pytest.raises(UsageError):
        parse_partition("100-50:1")
    with pytest.raises(UsageError):
        parse_delay("9-3")


def test_more_faults_than_bft_allows_is_refused() -> None:
    """n = 4 tolerates one fault (quorum 3 of 4); two crashed or Byzantine validators break it."""
    SimOptions(members=4, crashes=(Crash(1, 10),)).check()
    with pytest.raises(UsageError, match="floor"):
        SimOptions(members=4, crashes=(Crash(1, 10),), byzantine=((2, "silent"),)).check()
    with pytest.raises(UsageError, match="floor"):
        SimOptions(members=3, crashes=(Crash(1, 10),)).check()
    # an attacking trainer is not a validator fault: the contract deals with it
    SimOptions(members=4, crashes=(Crash(1, 10),), byzantine=((2, "scaling"),)).check()
