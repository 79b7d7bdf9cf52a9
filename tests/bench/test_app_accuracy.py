"""bench/app_accuracy.py in its smallest in-process form: example 1's model, one round, an
attacker and a robust rule (the real runs are manual: bench/README.md)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

pytest.importorskip("sklearn", reason="example 1's data set ships with scikit-learn")

import bench.app_accuracy as app_accuracy  # noqa: E402


def test_one_round_of_the_matrix_and_the_network_genesis(tmp_path: Path) -> None:
    split = app_accuracy.make_split(tmp_path, 3, seed=1)
    assert len(split.members) == 3 and len(split.test) == 359
    small = [m.subset(torch.arange(min(40, len(m)))) for m in split.members]
    acc = app_accuracy.federated(
        small, split.test, rounds=1, rule="median", attack="scaling", bad=frozenset({0})
    )
    assert 0.0 <= acc <= 1.0 and not math.isnan(acc)
    genesis = app_accuracy.network_genesis(4, 10)
    assert genesis.training.min_updates == 4 and genesis.training.rounds == 10
    assert genesis.training.deadline_blocks == app_accuracy.NETWORK_DEADLINE_BLOCKS
    assert genesis.model.app.entry_point == "digits_resnet:app"
