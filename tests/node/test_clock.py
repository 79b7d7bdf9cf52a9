"""The node's clock at real time, and the faster blob collection clock tests may ask for."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from bcfl_cli.errors import UsageError
from bcfl_cli.node.blob_keeper import BlobKeeper
from bcfl_cli.node.clock import TEST_COLLECTION_RATE_ENV, Clock, collection_clock
from bcfl_cli.store.blob_owners import BlobOwners
from bcfl_cli.store.blobs import BlobStore


def test_the_production_clock_is_real_time() -> None:
    clock = Clock()
    assert abs(clock.time() - time.time()) < 1.0
    assert abs(clock.now_ms() - time.time_ns() // 1_000_000) < 1000
    assert abs(clock.monotonic() - time.monotonic()) < 1.0


def test_a_faster_clock_runs_ahead_from_its_creation_and_sleeps_shorter() -> None:
    clock = Clock(rate=50.0)
    assert abs(clock.time() - time.time()) < 1.0  # it starts at real time

    async def nap() -> float:
        began = time.monotonic()
        await clock.sleep(5.0)  # 5 s of the clock: 0.1 s of real time
        return time.monotonic() - began

    assert asyncio.run(nap()) < 2.0
    time.sleep(0.1)
    assert clock.time() - time.time() >= 4.0  # 0.1 s of real time: 5 s of the clock
    assert clock.monotonic() - time.monotonic() >= 4.0


@pytest.mark.parametrize("rate", [0.5, 0.0, -1.0, float("nan"), float("inf")])
def test_a_clock_never_runs_slower_than_real_time_nor_without_bound(rate: float) -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Clock(rate=rate)


def test_the_collection_clock_is_real_time_unless_a_test_asks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(TEST_COLLECTION_RATE_ENV, raising=False)
    assert collection_clock("0.0.0.0").rate == 1.0
    monkeypatch.setenv(TEST_COLLECTION_RATE_ENV, "30")
    assert collection_clock("127.0.0.1").rate == 30.0


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "node.example.org", "::"])
def test_a_node_others_can_reach_refuses_the_test_clock(
    monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    monkeypatch.setenv(TEST_COLLECTION_RATE_ENV, "30")
    with pytest.raises(UsageError, match="loopback only"):
        collection_clock(host)


@pytest.mark.parametrize("raw", ["fast", "0.5", "nan"])
def test_a_bad_test_clock_rate_is_a_usage_error(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv(TEST_COLLECTION_RATE_ENV, raw)
    with pytest.raises(UsageError, match=TEST_COLLECTION_RATE_ENV):
        collection_clock("127.0.0.1")


def test_the_collection_passes_sleep_on_the_keepers_clock(tmp_path: Path) -> None:
    """``run`` waits ``interval_s`` of the clock it was given between passes (retention / 16)."""
    slept: list[float] = []

    class Stop(Exception):
        pass

    async def sleep(delay_s: float) -> None:
        slept.append(delay_s)
        if len(slept) == 3:
            raise Stop

    keeper = BlobKeeper(
        BlobStore(tmp_path / "blobs"),
        BlobOwners(tmp_path / "owners.sqlite"),
        referenced=(),
        quota_bytes=1 << 20,
        retention_s=64.0,
        sleep=sleep,
    )
    with pytest.raises(Stop):
        asyncio.run(keeper.run())
    assert slept == [4.0, 4.0, 4.0]
