"""The node's single worker thread: contract checks and aggregates run there, one at a time,
so that the event loop (HTTP, consensus timers) never computes."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

log = logging.getLogger("bcfl.node")

T = TypeVar("T")

THREAD_PREFIX = "bcfl-worker"


class ThreadWorker:
    """One thread for CPU-heavy work (implements ``interfaces.Worker``)."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix=THREAD_PREFIX)

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the worker thread (one at a time)."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    def shutdown(self, *, wait: bool = False) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)

    async def stop(self, grace_s: float) -> None:
        """Cancel what waits; give a check under way ``grace_s`` to end, then leave it (it only
        reads; blobs are written atomically)."""
        self.shutdown()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        while any(t.is_alive() for t in _threads()) and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if any(t.is_alive() for t in _threads()):
            log.warning("a check is still running in the worker; closing the stores anyway")


def _threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(THREAD_PREFIX)]
