"""A proposal whose check fails unexpectedly is answered INVALID (nil), logged, not lost.

Before, an exception other than ``BcflError`` out of the block check ended the validation task
silently: the proposal stayed UNKNOWN until the propose timeout and nothing said why.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from bcfl_cli.consensus.messages import Validity
from tests.node._chain_fixture import Chain
from tests.node.test_consensus_driver import (
    Fakes,
    Fetcher,
    RecordingDriver,
    Worker,
    chain,
    proposals,
    start,
    until,
)

__all__ = ["chain"]


class CrashingWorker(Worker):
    async def run(self, fn: Any) -> Any:
        self.calls += 1
        raise RecursionError("maximum recursion depth exceeded")


def test_a_check_that_crashes_makes_the_proposal_invalid(
    chain: Chain, caplog: pytest.LogCaptureFixture
) -> None:
    (block,), after = proposals(chain, 1)

    async def scenario() -> None:
        fakes = Fakes.of(chain, Fetcher(result=True, delay_s=0.0), after)
        worker = fakes.worker = CrashingWorker(after)
        driver = RecordingDriver(fakes)
        start(driver, block)
        assert driver.validate(block) is Validity.UNKNOWN
        await until(lambda: worker.calls == 1 and not driver._validating)
        assert driver.validate(block) is Validity.INVALID
        assert driver.rechecks() == 1
        driver.close()

    asyncio.run(scenario())
    assert "checking proposal" in caplog.text and "RecursionError" in caplog.text
