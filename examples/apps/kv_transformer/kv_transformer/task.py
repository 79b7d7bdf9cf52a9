"""The synthetic task: retrieve the value stored under a queried key.

A sequence is ``pairs`` slot tokens then one query token. Slot ``i`` holds key ``k_i`` and
value ``v_i`` as one token id ``k_i * values + v_i`` (keys distinct within a sequence); the
query token is ``keys * values + q`` for a key ``q`` among the slots' keys; the label is the
value under ``q``. Chance accuracy is ``1 / values``.

``python -m kv_transformer.task OUT.npz --rows 2000 --seed 1`` writes a member's file.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEMO_ROWS = 2000
TEST_ROWS = 1000


@dataclass(frozen=True)
class Task:
    keys: int = 32
    values: int = 16
    pairs: int = 8

    @property
    def vocab(self) -> int:
        return self.keys * self.values + self.keys

    @property
    def chance(self) -> float:
        return 1.0 / self.values


def sample(task: Task, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens ``[rows, pairs + 1]`` int64, labels ``[rows]`` int64)."""
    rng = np.random.default_rng(seed)
    keys = np.argsort(rng.random((rows, task.keys)), axis=1)[:, : task.pairs]
    values = rng.integers(0, task.values, size=(rows, task.pairs))
    asked = rng.integers(0, task.pairs, size=rows)
    slots = keys * task.values + values
    query = task.keys * task.values + keys[np.arange(rows), asked]
    tokens = np.concatenate([slots, query[:, None]], axis=1)
    return tokens.astype(np.int64), values[np.arange(rows), asked].astype(np.int64)


def write_npz(path: Path, task: Task, rows: int, *, seed: int) -> Path:
    tokens, labels = sample(task, rows, seed)
    np.savez(path, features=tokens.astype(np.float32), labels=labels)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write a member's sequences as .npz")
    parser.add_argument("out", type=Path)
    parser.add_argument("--rows", type=int, default=DEMO_ROWS)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(write_npz(args.out, Task(), args.rows, seed=args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
