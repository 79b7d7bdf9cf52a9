"""The node's clock: wall time for block and transaction times, loop time for timers.

The consensus engine has no clock of its own (it is a pure state machine); its timeouts are
turned into ``loop.call_later`` here, so a test can drive the node with a fake clock and the
engine never sees the difference.

A clock may run faster than real time (``rate``): only the blob collection's clock, and only
in tests of real node processes (``BCFL_TEST_COLLECTION_CLOCK_RATE``, honoured on loopback
alone), so that a test sees a minute of retention pass in seconds without waiting it out.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Callable

from bcfl_cli.errors import UsageError

#: Test only: the blob collection's clock runs this many times faster than real time.
TEST_COLLECTION_RATE_ENV = "BCFL_TEST_COLLECTION_CLOCK_RATE"
_LOOPBACK = {"127.0.0.1", "::1", "localhost"}


class Clock:
    """Wall-clock milliseconds and timers on the running asyncio loop, at ``rate`` times real
    time from the clock's creation (1: real time, the production clock)."""

    rate: float = 1.0  # class defaults: a test's subclass that sets its own time keeps them
    _wall0: float = 0.0
    _mono0: float = 0.0

    def __init__(self, rate: float = 1.0) -> None:
        if not (math.isfinite(rate) and rate >= 1.0):
            raise ValueError(f"a clock rate is at least 1, not {rate!r}")
        self.rate = rate
        self._wall0 = time.time()
        self._mono0 = time.monotonic()

    def _ahead(self, elapsed: float) -> float:
        return elapsed * (self.rate - 1.0)

    def time(self) -> float:
        """Wall-clock seconds (``time.time`` at rate 1)."""
        if self.rate == 1.0:
            return time.time()
        now = time.time()
        return now + self._ahead(now - self._wall0)

    def now_ms(self) -> int:
        if self.rate == 1.0:
            return time.time_ns() // 1_000_000
        return int(self.time() * 1000)

    def monotonic(self) -> float:
        now = time.monotonic()
        return now + self._ahead(now - self._mono0)

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay_s) / self.rate, callback)

    async def sleep(self, delay_s: float) -> None:
        await asyncio.sleep(max(0.0, delay_s) / self.rate)


def collection_clock(host: str) -> Clock:
    """The blob collection's clock: real time, unless a test sets
    ``BCFL_TEST_COLLECTION_CLOCK_RATE`` for a node listening on loopback only (a node others
    can reach refuses to start with it, so no production node runs on it by a slip)."""
    raw = os.environ.get(TEST_COLLECTION_RATE_ENV, "").strip()
    if not raw:
        return Clock()
    if host not in _LOOPBACK:
        raise UsageError(
            f"{TEST_COLLECTION_RATE_ENV} is for tests on loopback only; this node listens on"
            f" {host!r}",
            hint=f"unset {TEST_COLLECTION_RATE_ENV}",
        )
    try:
        rate = float(raw)
        return Clock(rate)
    except ValueError:
        raise UsageError(
            f"{TEST_COLLECTION_RATE_ENV}={raw!r}: expected a number of at least 1"
        ) from None
