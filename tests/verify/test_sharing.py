"""The shared checks (helpers and the caller): results in order, whoever checked a batch; a
helper's error or death never changes what the caller gets."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bcfl_cli.primitives import RESULT_FRAME_MAX
from bcfl_cli.verify.sharing import SharedChecks


def _total(arg: str, jobs: list[int]) -> tuple[int, int]:
    return len(jobs), sum(jobs)


def _fails_on_seven(arg: str, jobs: list[int]) -> int:
    if 7 in jobs:
        raise ValueError(f"seven in a batch ({arg})")
    return sum(jobs)


def _helpers_die(arg: str, jobs: list[int]) -> int:
    if os.getpid() != int(arg):
        os._exit(3)  # a helper killed mid-batch
    return sum(jobs)


def _batches(n: int) -> list[list[int]]:
    return [list(range(i, i + 5)) for i in range(n)]


@pytest.mark.parametrize("helpers", [0, 1, 3])
def test_results_in_order_whoever_checks(helpers):
    batches = _batches(40)
    with SharedChecks(helpers, _total, "") as shared:
        for jobs in batches:
            shared.submit(jobs)
        assert shared.results() == [_total("", jobs) for jobs in batches]
        assert shared.results() == [_total("", jobs) for jobs in batches]  # asked again


def test_a_helpers_error_is_raised_by_the_caller():
    with SharedChecks(2, _fails_on_seven, "here") as shared:
        for jobs in _batches(12):
            shared.submit(jobs)
        with pytest.raises(ValueError, match=r"seven in a batch \(here\)"):
            shared.results()


def test_batches_of_a_dead_helper_are_checked_by_the_caller():
    batches = _batches(25)
    with SharedChecks(2, _helpers_die, str(os.getpid())) as shared:
        for jobs in batches:
            shared.submit(jobs)
        assert shared.results() == [sum(jobs) for jobs in batches]


def test_helpers_are_gone_after_the_block():
    shared = SharedChecks(2, _total, "")
    processes = [helper.process for helper in shared._helpers]
    with shared:
        shared.submit([1, 2])
        assert shared.results() == [(2, 3)]
    assert all(p.returncode == 0 for p in processes)  # stopped when told, and reaped


#: Set in the caller by a test, after import: a forked helper would see the new value.
_CALLER_ONLY = ["as imported"]


def _module_state(arg: str, jobs: list[int]) -> str:
    return _CALLER_ONLY[0]


def test_a_helper_is_a_fresh_process_not_a_fork_of_the_caller():
    """A fork shares the caller's pages, which the replay then copies on each first write
    (~10,000 copy-on-write faults a pass): a helper starts as a new interpreter."""
    _CALLER_ONLY[0] = "changed by the caller"
    try:
        with SharedChecks(1, _module_state, "") as shared:
            processes = [helper.process for helper in shared._helpers]
            shared.submit([1])
            assert shared.results() == ["as imported"]
            assert all(os.getpgid(p.pid) != os.getpgid(0) for p in processes)  # no terminal ^C
            assert all(os.getsid(p.pid) == os.getsid(0) for p in processes)  # one CPU share
    finally:
        _CALLER_ONLY[0] = "as imported"


def test_the_helpers_module_imports_nothing_heavy():
    """verify-chain's helper imports PyNaCl and bcfl's errors, not the protocol or the store."""
    code = (
        "import sys, bcfl_cli.primitives; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'bcfl_cli', 'msgspec', 'sqlalchemy', 'torch', 'rfc8785', 'base58'})))"
    )
    found = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path[:] = {sys.path!r}; {code}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert found == ["bcfl_cli", "bcfl_cli.errors", "bcfl_cli.primitives"]


def _slow_then_mark(arg: str, jobs: list[int]) -> int:
    time.sleep(3)
    Path(arg).write_text("finished")
    return sum(jobs)


def test_helpers_are_killed_at_once_when_the_caller_leaves_on_an_exception(tmp_path):
    mark = tmp_path / "mark"
    shared = SharedChecks(1, _slow_then_mark, str(mark))
    processes = [helper.process for helper in shared._helpers]
    with pytest.raises(KeyboardInterrupt), shared:
        shared.submit([1, 2])
        raise KeyboardInterrupt
    assert [p.returncode for p in processes] == [-signal.SIGKILL]  # reaped, not left running
    assert not mark.exists()  # not waited for: its batch was never finished


def _oversized_from_helpers(arg: str, jobs: list[int]) -> int | str:
    if os.getpid() != int(arg):
        return "x" * (RESULT_FRAME_MAX + 1)
    return sum(jobs)


def test_an_answer_over_the_bound_ends_the_helper_and_the_caller_checks_its_batches():
    batches = _batches(6)
    with SharedChecks(2, _oversized_from_helpers, str(os.getpid())) as shared:
        processes = [helper.process for helper in shared._helpers]
        for jobs in batches:
            shared.submit(jobs)
        assert shared.results() == [sum(jobs) for jobs in batches]
        assert shared._helpers == []
    assert all(p.returncode == -signal.SIGKILL for p in processes)


@pytest.mark.parametrize("executable", ["", None])  # what sys.executable is when unknown
def test_without_an_interpreter_to_start_the_caller_checks_every_batch(monkeypatch, executable):
    monkeypatch.setattr(sys, "executable", executable)
    batches = _batches(5)
    with SharedChecks(2, _total, "") as shared:
        assert shared._helpers == []
        for jobs in batches:
            shared.submit(jobs)
        assert shared.results() == [_total("", jobs) for jobs in batches]
