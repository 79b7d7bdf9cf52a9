"""The node's clock: wall time for block and transaction times, loop time for timers.

The consensus engine has no clock of its own (it is a pure state machine); its timeouts are
turned into ``loop.call_later`` here, so a test can drive the node with a fake clock and the
engine never sees the difference.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class Clock:
    """Wall-clock milliseconds and timers on the running asyncio loop."""

    def now_ms(self) -> int:
        return time.time_ns() // 1_000_000

    def monotonic(self) -> float:
        return time.monotonic()

    def call_later(self, delay_s: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay_s), callback)
