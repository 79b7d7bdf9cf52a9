"""Batches of checks shared between helper processes and the caller, which checks too.

verify-chain's replay (the rules, in the caller) and its signature checks (in other processes)
used to run beside each other on a ``ProcessPoolExecutor`` of one worker a core: on N cores
that is N + 1 busy processes, and the pool adds two threads of its own to the caller. On a
2-core machine the three processes made every instruction dearer (the replay took ~25% more
CPU beside the workers than alone) and the pool's threads ~0.1 CPU-s a pass. Here the caller
starts ``workers - 1`` helpers, hands each at most ``DEPTH`` batches at a time over its own
socket (when it queues a batch or waits), and checks the queued batches itself once its
replay is done: N busy processes on N cores, no thread.

A helper is a fresh interpreter (``python -I -c``, the caller's ``sys.path``) that imports only
the module of its check (``bcfl_cli.primitives`` for verify-chain's): not a fork of the caller,
whose pages the replay would then copy on every first write (~10,000 copy-on-write faults a
pass), and not multiprocessing's spawn, which imports the caller's ``__main__`` again. It runs
one function, the check, on each batch and sends its result back. If that raises, or the
helper dies, the caller checks the batch itself, so an error is the one the in-process path
raises and no verdict rests on a helper being alive. Helpers are stopped and reaped on every
way out (killed at once when the caller leaves on an exception, a KeyboardInterrupt
included); one that does not stop within :data:`STOP_WAIT_S` is killed.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import socket
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from bcfl_cli.primitives import FAILED, RESULT_FRAME_MAX, recv_frame, send_frame

Job = TypeVar("Job")
Result = TypeVar("Result")
#: What a helper runs: a module-level function, which the helper imports by its name.
Check = Callable[[str, list[Job]], Result]
#: Batches a helper holds at a time: the one it checks and the next, so that it never waits
#: for the caller between two (the caller looks only when it queues a batch or is done).
DEPTH = 2

#: Bytes a socket may hold unread: ``DEPTH - 1`` batches waiting while the helper checks one
#: (~150 KB a batch of 100 blocks; a send beyond it would stall the replay until the helper
#: reads). Asked of the kernel, which may give less (Linux caps it at wmem_max).
PIPE_BYTES = 1 << 20
#: Seconds a helper told to stop may take to exit before it is killed.
STOP_WAIT_S = 5.0

#: What a helper process runs: its check's module and function, its argument, the caller's
#: ``sys.path`` (so that it imports the caller's code, not another copy on its own path).
_BOOT = (
    "import sys; fd, target, arg = int(sys.argv[1]), sys.argv[2], sys.argv[3]; "
    "sys.path[:] = sys.argv[4:]; "
    "from bcfl_cli.primitives import serve; serve(fd, target, arg)"
)


def _target(check: Callable[..., Any]) -> str:
    """``module:function`` of a module-level function, for a helper to import."""
    name = getattr(check, "__qualname__", "")
    module = getattr(check, "__module__", None)
    if not module or not name or "." in name or module == "__main__":
        raise ValueError(f"a helper's check must be a module-level function, not {check!r}")
    return f"{module}:{name}"


class _Helper:
    def __init__(self, sock: socket.socket, process: subprocess.Popen[bytes]) -> None:
        self.sock = sock
        self.process = process
        self.held: deque[int] = deque()  # batch indices sent and not answered, in order


def _start(target: str, arg: str) -> _Helper | None:
    """A helper process on one end of a socket pair; None where none can be started (no
    socket pairs to inherit: the caller then checks every batch itself)."""
    if os.name != "posix" or not sys.executable:  # no interpreter to start (embedded Python)
        return None
    mine, theirs = socket.socketpair()
    try:
        with contextlib.suppress(OSError):
            mine.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, PIPE_BYTES)
        fd = theirs.fileno()
        process = subprocess.Popen(
            [sys.executable, "-I", "-c", _BOOT, str(fd), target, arg, *sys.path],
            pass_fds=(fd,),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            # its own process group, so that a terminal's Ctrl-C is the caller's to handle;
            # not its own session, which the scheduler (autogroup) would give a share of the
            # CPU of its own beside the caller's on a loaded machine
            process_group=0,
        )
    except OSError:  # no interpreter there, or no process to be had: the caller checks
        mine.close()
        return None
    except BaseException:
        mine.close()
        raise
    finally:
        theirs.close()
    return _Helper(mine, process)


def _stop(helper: _Helper, *, kill: bool) -> None:
    """Close a helper's socket and reap it: killed first if ``kill``, or if it lingers past
    :data:`STOP_WAIT_S` (a helper told to stop ends after the batch it is checking)."""
    helper.sock.close()
    process = helper.process
    if kill:
        process.kill()
    try:
        process.wait(timeout=STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except BaseException:  # interrupted while waiting: never leave it running
        process.kill()
        process.wait()
        raise


def _readable(sock: socket.socket) -> bool:
    """Whether a read of ``sock`` would not block: an answer waits, or the helper is gone."""
    try:
        sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    return True


class SharedChecks(Generic[Job, Result]):
    """Batches queued in order, checked by helpers or by the caller; results in that order.

    Use as a context manager: the helpers are stopped and waited for on exit (killed at once
    if the block raised), so that their CPU time is the caller's children's
    (``RUSAGE_CHILDREN``) and no process outlives it.
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
        target = _target(check) if helpers > 0 else ""
        try:
            for _ in range(max(0, helpers)):
                helper = _start(target, arg)
                if helper is not None:
                    self._helpers.append(helper)
        except BaseException:
            self.close(kill=True)
            raise

    def __enter__(self) -> SharedChecks[Job, Result]:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        self.close(kill=kind is not None)

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

    def close(self, *, kill: bool = False) -> None:
        """Stop every helper (``kill``: at once) and reap it."""
        helpers, self._helpers = self._helpers, []
        try:
            if not kill:
                for helper in helpers:  # all told first: they stop side by side
                    with contextlib.suppress(OSError):
                        send_frame(helper.sock.fileno(), None)
        finally:
            for helper in helpers:
                _stop(helper, kill=kill)

    def _run_here(self, index: int) -> None:
        self._results[index] = self._check(self._arg, self._batches[index])
        self._done[index] = True
        self._batches[index] = []

    def _feed(self) -> None:
        for helper in list(self._helpers):
            while self._queued and len(helper.held) < DEPTH:
                index = self._queued.popleft()
                try:
                    send_frame(helper.sock.fileno(), self._batches[index])
                except (OSError, ValueError):  # gone, or a batch marshal cannot carry
                    self._queued.appendleft(index)
                    self._lose(helper)
                    break
                helper.held.append(index)

    def _collect(self, *, block: bool) -> None:
        """Take the helpers' answers: any ready ones, or (``block``) at least one."""
        busy = [h for h in self._helpers if h.held]
        if not busy:
            return
        if block and not any(_readable(h.sock) for h in busy):
            with selectors.DefaultSelector() as selector:
                for helper in busy:
                    selector.register(helper.sock, selectors.EVENT_READ)
                selector.select()
        for helper in busy:
            while helper.held and _readable(helper.sock):
                self._take(helper)

    def _take(self, helper: _Helper) -> None:
        """One answer of ``helper``, which has one to read (or is gone)."""
        try:
            result = recv_frame(helper.sock.fileno(), RESULT_FRAME_MAX)
        except (EOFError, OSError, ValueError):  # gone, or not an answer: its batches back
            self._lose(helper)
            return
        index = helper.held.popleft()
        if isinstance(result, str) and result == FAILED:
            self._failed.append(index)
        else:
            self._results[index] = result
            self._done[index] = True
            self._batches[index] = []

    def _lose(self, helper: _Helper) -> None:
        """A helper that died (or answered nonsense): its batches go back to the queue's head,
        in order, and it is killed and reaped."""
        self._queued.extendleft(reversed(helper.held))
        helper.held.clear()
        self._helpers.remove(helper)
        _stop(helper, kill=True)
