"""Example 1, examples/apps/digits_resnet: a ResNet-style CNN (>= 1M parameters) on
scikit-learn's digits, split non-IID; built, loaded and trained through bcfl's app runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bcfl_cli.apps.runner import BoundApp, bind_unpinned
from bcfl_cli.errors import UsageError
from bcfl_cli.protocol.spec import TrainingPlan

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "apps" / "digits_resnet"
PLAN = TrainingPlan(optimizer="adam", lr=0.001, batch_size=32, holdout_fraction=0.0)

pytest.importorskip("sklearn", reason="the example's data set ships with scikit-learn")


def bound(plan: TrainingPlan = PLAN) -> BoundApp:
    return bind_unpinned("digits_resnet:app", {}, plan, FOLDER)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], Path]:
    from digits_resnet.data import write_partitions  # importable once bound

    bound()
    return write_partitions(tmp_path_factory.mktemp("digits"), 4, alpha=0.5, seed=0)


def test_model_size_and_determinism() -> None:
    app = bound()
    state = app.initial_state()
    assert sum(t.numel() for t in state.values()) >= 1_000_000
    assert all(t.dtype == torch.float32 for t in state.values())
    assert app.initial_model_hash() == bound().initial_model_hash()


def test_split_is_non_iid_and_keeps_a_common_test_set(split: tuple[list[Path], Path]) -> None:
    parts, test = split
    counts = []
    for path in parts:
        with np.load(path) as f:
            assert f["features"].shape[1] == 64 and 0 <= f["features"].min() <= 1
            counts.append(np.bincount(f["labels"], minlength=10))
    total = sum(c.sum() for c in counts)
    with np.load(test) as f:
        test_counts = np.bincount(f["labels"], minlength=10)
    assert total + test_counts.sum() == 1797  # every digit once, no download
    assert test_counts.min() >= 35  # stratified
    shares = np.array(counts) / np.array(counts).sum(axis=0)
    assert shares.max() > 0.5  # some member holds most of some class: non-IID


def test_one_round_trains_and_improves(split: tuple[list[Path], Path]) -> None:
    parts, _ = split
    app = bound(PLAN.model_copy(update={"local_steps": 4}))
    data = app.load_data(parts[0])
    start = app.initial_state()
    result = app.train_round(start, data, seed=1)
    again = app.train_round(start, data, seed=1)
    assert all(torch.equal(result.delta[k], again.delta[k]) for k in start)  # seeded
    assert result.num_samples == len(data) and result.metrics["steps"] == "4"
    before = app.evaluate(start, data)["loss"]
    after = app.evaluate({k: start[k] + result.delta[k] for k in start}, data)["loss"]
    assert after < before


def test_load_data_refuses_another_shape_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "wrong.npz"
    np.savez(path, features=np.zeros((3, 30), np.float32), labels=np.array([0, 1, 2]))
    with pytest.raises(UsageError, match=r"wrong.npz: 30 feature columns, the consortium model"):
        bound().load_data(path)


def test_config_refuses_unknown_keys() -> None:
    from bcfl_cli.errors import AppError

    with pytest.raises(AppError, match="unknown config keys"):
        bind_unpinned("digits_resnet:app", {"depth": 50}, PLAN, FOLDER).build_model()
