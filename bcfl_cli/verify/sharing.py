"""Batches of checks shared between helper processes and the caller, which checks too.

verify-chain's replay (the rules, in the caller) and its signature checks (in other processes)
used to run beside each other on a ``ProcessPoolExecutor`` of one worker a core: on N cores
that is N + 1 busy processes, and the pool adds two threads of its own to the caller. On a
2-core machine the three processes made every instruction dearer (the replay took ~25% more
CPU beside the workers than alone) and the pool's threads ~0.1 CPU-s a pass. Here the caller
forks ``workers - 1`` helpers, hands each at most ``DEPTH`` batches at a time over its own
pipe (from its own thread, when it queues a batch or waits), and checks the queued batches
itself once its replay is done: N busy processes on N cores, no thread.

A helper runs one function, :data:`Check`, on each batch and sends its result back. If that
raises, or the helper dies, the caller checks the batch itself, so an error is the one the
in-process path raises and no verdict rests on a helper being alive.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import socket
import sys
from collections import deque
from collections.abc import Callable
from multiprocessing.connection import Connection, wait
from typing import Any, Generic, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")
#: What a helper runs: a module-level function (picklable where processes are spawned).
Check = Callable[[str, list[Job]], Result]
#: Batches a helper holds at a time: the one it checks and the next, so that it never waits
#: for the caller between two (the caller looks only when it queues a batch or is done).
DEPTH = 2

#: Bytes a pipe may hold unread: ``DEPTH - 1`` batches waiting while the helper checks one
#: (~150 KB pickled a batch of 100 blocks; a send beyond it would stall the replay until the
#: helper reads). Asked of the kernel, which may give less (Linux caps it at wmem_max).
PIPE_BYTES = 1 << 20

_FAILED = "failed"


def _widen(conn: Connection) -> None:
    """Ask for a send buffer of :data:`PIPE_BYTES` on the caller's end of a socket pair."""
    try:
        sock = socket.fromfd(conn.fileno(), socket.AF_UNIX, socket.SOCK_STREAM)  # a dup'd fd
    except (OSError, AttributeError):
        return  # not a socket (Windows' pipes): sends may stall the replay, never fail
    with sock, contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIPE_BYTES)


def mp_context() -> multiprocessing.context.BaseContext:
    """fork where the platform has it: helpers start in milliseconds, not seconds of imports.

    Helpers only check signatures and hash blob files; they touch no database.
    """
    if sys.platform == "linux":
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("spawn")


def _serve(
    conn: Connection, parent_end: Connection, check: Callable[[str, list[Any]], Any], arg: str
) -> None:
    """A helper: check each batch received until the caller says stop (``None``) or is gone."""
    parent_end.close()  # a forked copy of the caller's end: the caller's exit must close it
    while True:
        try:
            jobs = conn.recv()
        except (EOFError, OSError):
            return
        if jobs is None:
            return
        try:
            result: Any = check(arg, jobs)
        except Exception:  # the caller re-checks the batch itself, and raises what it raises
            result = _FAILED
        conn.send(result)


class _Helper:
    def __init__(self, conn: Connection, process: multiprocessing.process.BaseProcess) -> None:
        self.conn = conn
        self.process = process
        self.held: deque[int] = deque()  # batch indices sent and not answered, in order


class SharedChecks(Generic[Job, Result]):
    """Batches queued in order, checked by helpers or by the caller; results in that order.

    Use as a context manager: the helpers are stopped and waited for on exit, so that their
    CPU time is the caller's children's (``RUSAGE_CHILDREN``) and no process outlives it.
    """

    def __init__(self, helpers: int, check: Check[Job, Result], arg: str) -> None:
        self._check = check
        self._arg = arg
        self._batches: list[list[Job]] = []
        self._results: list[Result | None] = []
        self._done: list[bool] = []
        self._queued: deque[int] = deque()  # batch indices no helper holds yet
        self._failed: list[int] = []  # batches whose check raised in a helper: the caller's
        self._helpers: list[_Helper] = []
        ctx: Any = mp_context()  # typeshed's BaseContext has no Process; fork's and spawn's do
        for _ in range(max(0, helpers)):
            mine, theirs = ctx.Pipe(duplex=True)
            _widen(mine)
            process = ctx.Process(target=_serve, args=(theirs, mine, check, arg), daemon=True)
            process.start()
            theirs.close()
            self._helpers.append(_Helper(mine, process))

    def __enter__(self) -> SharedChecks[Job, Result]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def submit(self, jobs: list[Job]) -> None:
        """Queue a batch; idle helpers get the queue's head at once."""
        self._batches.append(jobs)
        self._results.append(None)
        self._done.append(False)
        self._queued.append(len(self._batches) - 1)
        self._collect(block=False)
        self._feed()

    def results(self) -> list[Result]:
        """Every batch's result, in the order submitted: the caller checks queued batches
        itself while the helpers check theirs. A check that raised in a helper is run again
        here, where it raises (after the replay, as it would have from a pool's future)."""
        while not all(self._done):
            self._collect(block=False)
            self._feed()
            if self._failed:
                self._run_here(self._failed.pop(0))  # raises here what the helper's raised
            elif self._queued:
                self._run_here(self._queued.popleft())
            elif any(h.held for h in self._helpers):
                self._collect(block=True)
        out: list[Result] = []
        for result in self._results:
            assert result is not None
            out.append(result)
        return out

    def close(self) -> None:
        for helper in self._helpers:
            with contextlib.suppress(OSError):
                helper.conn.send(None)
            helper.conn.close()
        for helper in self._helpers:
            helper.process.join(timeout=5)
            if helper.process.is_alive():
                helper.process.kill()
                helper.process.join()
        self._helpers = []

    def _run_here(self, index: int) -> None:
        self._results[index] = self._check(self._arg, self._batches[index])
        self._done[index] = True
        self._batches[index] = []

    def _feed(self) -> None:
        for helper in list(self._helpers):
            while self._queued and len(helper.held) < DEPTH:
                index = self._queued.popleft()
                try:
                    helper.conn.send(self._batches[index])
                except OSError:
                    self._queued.appendleft(index)
                    self._lose(helper)
                    break
                helper.held.append(index)

    def _collect(self, *, block: bool) -> None:
        """Take the helpers' answers: any ready ones, or (``block``) at least one."""
        busy = [h for h in self._helpers if h.held]
        if not busy:
            return
        ready = wait([h.conn for h in busy], timeout=None if block else 0)
        for helper in busy:
            if helper.conn not in ready:
                continue
            while helper.held and helper.conn.poll():
                try:
                    result = helper.conn.recv()
                except (EOFError, OSError):
                    self._lose(helper)
                    break
                index = helper.held.popleft()
                if isinstance(result, str) and result == _FAILED:
                    self._failed.append(index)
                else:
                    self._results[index] = result
                    self._done[index] = True
                    self._batches[index] = []

    def _lose(self, helper: _Helper) -> None:
        """A helper that died: its batches go back to the queue's head, in order."""
        self._queued.extendleft(reversed(helper.held))
        helper.held.clear()
        self._helpers.remove(helper)
        helper.conn.close()
        helper.process.join(timeout=5)
