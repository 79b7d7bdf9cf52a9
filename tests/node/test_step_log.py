"""The node's log shows a round's training move: step, total and loss, at a bounded rate."""

from __future__ import annotations

import logging

import pytest

from bcfl_cli.node import trainer


def test_step_log_is_rate_limited_and_logs_the_last_step(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = iter([0.0, 1.0, 2.0, 10.0, 11.0])
    monkeypatch.setattr(trainer.time, "monotonic", lambda: next(clock))
    caplog.set_level(logging.INFO, logger=trainer.log.name)
    step_log = trainer.StepLog(3)  # created at t=0
    for step, loss in ((1, 2.0), (2, 1.5), (3, 1.0), (4, 0.5)):
        step_log(step, 4, loss)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["round 3: step 3/4, loss 1.0000", "round 3: step 4/4, loss 0.5000"]
