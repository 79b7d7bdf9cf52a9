"""What the fault suites share: a consortium factory, a watcher of committed blocks, checks.

``ChainWatch`` is the "no committed block is lost or changed" check: every block any node
serves is recorded by height the first time it is seen; every later sighting, on any node and
at any time (before and after that node was killed), must carry the same hash, and a node that
restarts must come back at least as high as it was seen before the fault.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bcfl_cli.demo.launcher import GenesisPlan, LocalConsortium, MemberPlan
from bcfl_cli.fl.checks import FLChecks
from bcfl_cli.home import Home
from bcfl_cli.protocol.block import Block
from bcfl_cli.protocol.spec import AggregationSpec, ContractRules, ModelSpec, TrainingPlan
from bcfl_cli.store.ledger import Ledger
from bcfl_cli.verify import verify_chain

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "sample_data" / "partitions" / "digits"
DIGITS_MLP = ModelSpec(architecture="mlp", input_shape=[64], num_classes=10, hidden=[64], seed=0)
#: Where the suites also write their figures as JSON (set it to collect them; always printed).
FIGURES = os.environ.get("BCFL_FAULT_FIGURES")


def plan(
    *,
    rounds: int = 1000,
    min_updates: int = 3,
    deadline_blocks: int | None = 20,
    round_deadline_s: int | None = None,
    rule: str = "fedavg",
    max_update_norm: float = 10.0,
    local_epochs: int = 1,
    lr: float = 0.05,
    validators: int = 4,
    max_blob_bytes: int = 64 * 1024 * 1024,
    **aggregation: Any,
) -> GenesisPlan:
    approvals = min(2, validators)
    return GenesisPlan(
        model=DIGITS_MLP,
        training=TrainingPlan(
            rounds=rounds,
            lr=lr,
            local_epochs=local_epochs,
            min_updates=min_updates,
            deadline_blocks=deadline_blocks,
            round_deadline_s=round_deadline_s,
        ),
        contract=ContractRules(
            max_update_norm=max_update_norm, min_samples=10, max_blob_bytes=max_blob_bytes
        ),
        aggregation=AggregationSpec(rule=rule, **aggregation),  # type: ignore[arg-type]
        name="Fault Suite Consortium",
        admission_approvals=approvals,
        removal_approvals=approvals,
    )


def members(
    names: Sequence[str], *, split: str = "", attacks: dict[str, str] | None = None
) -> list[MemberPlan]:
    """Founders training on the shipped digits split for their count (IID unless ``split``)."""
    folder = DIGITS / (split or f"{len(names)}-iid")
    files = sorted(folder.glob("member-*.csv"))
    attacks = attacks or {}
    return [
        MemberPlan(n, data=files[i % len(files)] if files else None, attack=attacks.get(n))
        for i, n in enumerate(names)
    ]


MakeConsortium = Callable[..., LocalConsortium]


def lone_validator(tmp_path: Path, max_blob_bytes: int) -> Iterator[LocalConsortium]:
    """One validator, alice, running without training: the target of the single-node attacks
    (a generator for a fixture to delegate to; the process is always stopped)."""
    c = LocalConsortium(
        tmp_path / "c",
        members(["alice"]),
        plan(validators=1, min_updates=1, max_blob_bytes=max_blob_bytes),
    )
    try:
        c.start("alice", train=False)
        c.wait_ready("alice", timeout=120)
        yield c
    finally:
        c.close()


@pytest.fixture
def consortium(tmp_path: Path) -> Iterator[MakeConsortium]:
    """Factory of ``LocalConsortium``s whose processes are always stopped at teardown."""
    with contextlib.ExitStack() as made:
        count = itertools.count()

        def factory(
            founders: Sequence[MemberPlan], genesis: GenesisPlan, **kw: Any
        ) -> LocalConsortium:
            root = tmp_path / f"c{next(count)}"
            return made.enter_context(LocalConsortium(root, founders, genesis, **kw))

        yield factory


@dataclass
class ChainWatch:
    """Every block hash seen, by height, from every node, across the whole test."""

    c: LocalConsortium
    hashes: dict[int, str] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)  # node -> highest height compared
    sightings: int = 0

    def observe(self, names: Sequence[str] | None = None) -> None:
        for name in names or self.c.names:
            member = self.c.members[name]
            if not member.running or member.paused:
                continue
            try:
                for _ in range(20):
                    start = self.seen.get(name, 0) + 1
                    blocks = self.c.blocks(name, start, 100)
                    if not blocks:
                        break
                    for raw in blocks:
                        self.record(name, Block.from_dict(raw))
            except (httpx.HTTPError, ValueError):
                continue

    def record(self, name: str, block: Block) -> None:
        known = self.hashes.setdefault(block.height, block.hash)
        assert (
            known == block.hash
        ), f"{name} serves block {block.height} = {block.hash[:16]}, seen before as {known[:16]}"
        self.seen[name] = max(self.seen.get(name, 0), block.height)
        self.sightings += 1

    def forget(self, name: str) -> None:
        """Re-read ``name``'s whole chain on the next observation (after it restarted)."""
        self.seen[name] = 0

    @property
    def height(self) -> int:
        return max(self.hashes, default=0)

    def check_stores(self) -> int:
        """Every stopped node's store holds exactly the recorded blocks; the blocks compared."""
        compared = 0
        for name in self.c.names:
            with Ledger.open(self.c.members[name].home) as ledger:
                for block in ledger.blocks(1, ledger.height):
                    self.record(name, block)
                    compared += 1
        return compared


def verify_all(c: LocalConsortium) -> dict[str, dict[str, Any]]:
    """``verify-chain --deep`` on every (stopped) home, as the CLI runs it."""
    out = {}
    for name in c.names:
        with Ledger.open(Home.resolve(c.members[name].home.root)) as ledger:
            report = verify_chain(
                ledger, deep=True, checks=FLChecks(ledger.blobs, keep_models=False)
            )
        out[name] = report.to_dict()
    return out


def converged(c: LocalConsortium, names: Sequence[str], target: int) -> bool:
    """All ``names`` at height >= ``target`` and holding the same block at their lowest height."""
    heights = c.heights(names)
    low = min(heights.values())
    if low < target:
        return False
    hashes = set()
    for name in names:
        blocks = c.blocks(name, low, 1)
        if not blocks:
            return False
        hashes.add(Block.from_dict(blocks[0]).hash)
    return len(hashes) == 1


def save_figures(test: str, figures: dict[str, Any]) -> None:
    print(f"{test} figures: {json.dumps(figures)}")
    if FIGURES:
        Path(FIGURES).mkdir(parents=True, exist_ok=True)
        (Path(FIGURES) / f"{test}.json").write_text(json.dumps(figures, indent=1) + "\n")


def diagnose(c: LocalConsortium) -> str:
    """Each node's height, consensus step and the tail of its log (for a failure message)."""
    lines = []
    for name in c.names:
        status = c.try_status(name)
        member = c.members[name]
        state = "paused" if member.paused else ("up" if member.running else "down")
        if status is not None:
            lines.append(f"{name} ({state}): height {status['height']} {status['consensus']}")
        else:
            lines.append(f"{name} ({state}): no answer")
        lines.append(c.log(name, 1500))
    return "\n".join(lines)


def wait_until(
    probe: Callable[[], Any],
    timeout: float,
    what: str,
    c: LocalConsortium | None = None,
    poll: float = 0.2,
) -> float:
    """Seconds until ``probe()`` was truthy; AssertionError (with diagnostics) after ``timeout``."""
    start = time.monotonic()
    while not probe():
        if time.monotonic() - start > timeout:
            detail = diagnose(c) if c is not None else ""
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}\n{detail}")
        time.sleep(poll)
    return time.monotonic() - start
