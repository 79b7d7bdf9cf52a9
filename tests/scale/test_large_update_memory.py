"""A validating node's memory stays bounded by the update size, not by its count (issue 19).

Two real ``bcfl node`` processes: ``member-01`` trains an MLP whose update is a ~64 MB blob,
``member-02`` only validates: it fetches the update, runs the contract on it and recomputes the
aggregate, as every validator does. Its peak resident memory (VmHWM, the kernel's exact
high-water mark) above its idle baseline (measured after start-up, before any update exists)
must stay under 2x the update size: a node that holds a whole update in memory twice (the
bytes, then the decoded tensors; or a float64 copy of them) fails it. The same path is what
``bench/large_model.py`` measures at 1M-110M parameters.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import pytest

from bcfl_cli.demo.launcher import LocalConsortium, MemberPlan
from bcfl_cli.fl.models import parameter_count
from bench.common import DATA, GENESIS_TIME_MS, PASSPHRASE, PLAN, genesis_plan
from bench.large_model import mlp, proc_status_kib, width_for

#: ~64 MB of float32 parameters: the update the bound is checked on
UPDATE_PARAMS = 16_000_000
#: the acceptance bound of issue 19: peak above idle below this many update sizes
VALIDATOR_BUDGET_X = 2.0
ROUND_TIMEOUT_S = 120.0
IDLE_WINDOW_S = 1.5

pytestmark = pytest.mark.network


def _rss(pid: int) -> int:
    return proc_status_kib(pid, "VmRSS")


def test_a_validator_holds_less_than_two_updates_above_idle(tmp_path: Path) -> None:
    spec = mlp(width_for(UPDATE_PARAMS))
    update_bytes = 4 * parameter_count(spec)
    parts = DATA / "partitions" / "digits" / "4-dir0.5"
    plans = [
        MemberPlan("member-01", data=parts / "member-01.csv"),
        MemberPlan("member-02"),  # validates only: no --train
    ]
    genesis = genesis_plan(
        spec,
        PLAN,
        rounds=1,
        min_updates=1,
        deadline_blocks=1000,
        max_blob_bytes=2 * update_bytes,
    )
    with LocalConsortium(
        tmp_path,
        plans,
        genesis,
        passphrase=PASSPHRASE,
        genesis_time_ms=GENESIS_TIME_MS,
        empty_block_interval=None,
        timeout_propose_ms=None,
        env={"OMP_NUM_THREADS": "1"},
    ) as consortium:
        validator = consortium.start("member-02", train=False)
        consortium.wait_ready("member-02", timeout=60.0)
        assert validator.proc is not None
        pid = validator.proc.pid
        samples = []
        window_end = time.monotonic() + IDLE_WINDOW_S
        while time.monotonic() < window_end:
            samples.append(_rss(pid))
            time.sleep(0.1)
        idle = int(statistics.median(samples))

        consortium.start("member-01", train=True)
        consortium.wait_round_closed(1, timeout=ROUND_TIMEOUT_S)
        peak = proc_status_kib(pid, "VmHWM")
        status = consortium.status("member-02")

    assert status["round"]["updates"], "the round closed without the update"
    above = peak - idle
    ratio = above / update_bytes
    # in the CI log beside the durations: 11.45x on 4a649b7, 2.15x with every update streamed
    # but the contract's expected layout built from the weights (issue 19)
    print(f"validator peak {ratio:.2f}x the update above idle ({above / 1e6:.0f} MB)")
    assert ratio < VALIDATOR_BUDGET_X, (
        f"validator peak {peak / 1e6:.0f} MB, idle {idle / 1e6:.0f} MB: {above / 1e6:.0f} MB "
        f"above idle = {ratio:.2f}x the {update_bytes / 1e6:.0f} MB update "
        f"(budget {VALIDATOR_BUDGET_X:g}x)"
    )
