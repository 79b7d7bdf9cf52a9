"""Real ``bcfl node`` processes on 127.0.0.1 for multi-process tests (and the CLI tests).

A thin layer over ``bcfl_cli.demo.LocalConsortium`` (the one in-package launcher, shared with
``bcfl demo``, the fault suites and the benchmarks): founders' homes are made the honest, simple
way (each generates its own identity and runs ``init_consortium`` on the same consortium file with
the same genesis time, as each organisation would run ``bcfl init``), one node process per member.
This module only fixes what the network tests expect: the tiny model and plan below, digits
partitions, the test passphrase, and AssertionError on a timeout.

``Cluster`` always stops what it started: use it as a context manager, or through the
``cluster`` fixture of ``tests/network/conftest.py`` (SIGTERM, then SIGKILL after a grace).
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bcfl_cli.demo.launcher import (
    GenesisPlan,
    LocalConsortium,
    Member,
    MemberPlan,
    bcfl_command,
    free_ports,
)
from bcfl_cli.errors import NodeError
from bcfl_cli.protocol.spec import AggregationSpec, ContractRules, ModelSpec, TrainingPlan

PASSPHRASE = "correct horse battery staple"
REPO = Path(__file__).resolve().parents[2]
DIGITS_4 = REPO / "sample_data" / "partitions" / "digits" / "4-iid"
GENESIS_TIME_MS = 1_763_000_000_000

__all__ = [
    "DIGITS_4",
    "PASSPHRASE",
    "Cluster",
    "Member",
    "bcfl_command",
    "free_ports",
    "iter_members",
    "network_plan",
    "wait_for",
]


def network_plan(
    *,
    rounds: int = 3,
    min_updates: int = 4,
    deadline_blocks: int = 40,
    hidden: int = 16,
    rule: str = "fedavg",
    max_blob_bytes: int = 64 * 1024 * 1024,
    input_shape: str = "[64]",
    admission_approvals: int | None = None,
    members: int = 4,
) -> GenesisPlan:
    """The network tests' genesis: a tiny digits MLP, one epoch a round, a loose contract."""
    approvals = admission_approvals or min(2, members)
    return GenesisPlan(
        model=ModelSpec(
            architecture="mlp",
            input_shape=[int(d) for d in input_shape.strip("[]").split(",")],
            num_classes=10,
            hidden=[hidden],
            seed=0,
        ),
        training=TrainingPlan(
            rounds=rounds,
            lr=0.05,
            batch_size=32,
            local_epochs=1,
            min_updates=min_updates,
            deadline_blocks=deadline_blocks,
        ),
        contract=ContractRules(
            max_update_norm=1000.0, min_samples=1, max_blob_bytes=max_blob_bytes
        ),
        aggregation=AggregationSpec(rule=rule),  # type: ignore[arg-type]
        name="Network Test Consortium",
        admission_approvals=approvals,
        removal_approvals=approvals,
    )


class Cluster(LocalConsortium):
    """Founders (and later members) of one consortium, each with its own home and port."""

    def __init__(
        self,
        root: Path,
        names: list[str],
        config: dict[str, Any] | None = None,
        *,
        empty_block_interval: float = 0.3,
        timeout_propose_ms: int = 1500,
    ) -> None:
        self.config = dict(config or {})
        founders = []
        for i, name in enumerate(names):
            data = DIGITS_4 / f"member-{i % 4 + 1:02d}.csv"
            founders.append(MemberPlan(name, data=data if data.exists() else None))
        super().__init__(
            root,
            founders,
            network_plan(members=len(names), **self.config),
            passphrase=PASSPHRASE,
            genesis_time_ms=GENESIS_TIME_MS,
            empty_block_interval=empty_block_interval,
            timeout_propose_ms=timeout_propose_ms,
        )

    def __enter__(self) -> Cluster:
        return self

    def start_all(self, *, train: bool = True, wait: bool = True, timeout: float = 120.0) -> None:
        super().start_all(train=train, wait=wait, timeout=timeout)

    def wait_ready(self, name: str, timeout: float = 120.0) -> dict[str, Any]:
        """The node answers /v1/status. 120 s, as the fault suites allow: a node's start-up
        (torch, the key, the store) is not what these tests bound, and four nodes starting at
        once on a loaded 2-core machine took over 60 s (test_join failed so at load 26)."""
        try:
            return super().wait_ready(name, timeout)
        except NodeError as exc:
            raise AssertionError(f"{exc.message}\n{exc.hint or ''}") from None

    def wait_height(
        self, height: int, names: list[str] | None = None, timeout: float = 60.0
    ) -> None:
        try:
            super().wait_height(height, names, timeout)
        except NodeError as exc:
            raise AssertionError(exc.message) from None

    def wait_round_closed(
        self, number: int, names: list[str] | None = None, timeout: float = 90.0
    ) -> None:
        try:
            super().wait_round_closed(number, names, timeout)
        except NodeError as exc:
            raise AssertionError(exc.message) from None

    def run_cli_each(
        self, calls: Sequence[Sequence[str]], timeout: float = 60.0
    ) -> list[subprocess.CompletedProcess[str]]:
        """``run_cli`` for each argument list, all started at once (one process each), in the
        order given: the deep checks that end a test run side by side on the machine's cores,
        not one after another. Each keeps ``timeout`` seconds of its own: side by side, the
        whole batch may take up to ``timeout`` times the number of calls."""
        budget = timeout * max(1, len(calls))
        with ThreadPoolExecutor(max(1, len(calls))) as pool:
            return list(pool.map(lambda args: self.run_cli(*args, timeout=budget), calls))


def wait_for(probe: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Like ``bcfl_cli.demo.wait_for``, failing the test with an AssertionError."""
    from bcfl_cli.demo.launcher import wait_for as launcher_wait

    try:
        return launcher_wait(probe, timeout, what, interval)
    except NodeError as exc:
        raise AssertionError(exc.message) from None


def iter_members(cluster: Cluster) -> Iterator[Member]:
    yield from cluster.members.values()
