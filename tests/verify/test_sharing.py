"""The shared checks (helpers and the caller): results in order, whoever checked a batch; a
helper's error or death never changes what the caller gets."""

from __future__ import annotations

import os

import pytest

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
    assert all(p.exitcode == 0 for p in processes)
