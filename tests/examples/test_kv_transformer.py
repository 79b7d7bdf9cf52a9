"""Example 2, examples/apps/kv_transformer: a transformer encoder (>= 5M parameters) on a
synthetic key-value retrieval task whose chance level is 1/16; a small config of the same app
learns it well above chance in a few hundred steps of bcfl's default loop."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from bcfl_cli.apps.runner import BoundApp, bind_unpinned
from bcfl_cli.errors import UsageError
from bcfl_cli.protocol.spec import TrainingPlan

FOLDER = Path(__file__).resolve().parents[2] / "examples" / "apps" / "kv_transformer"
SMALL = {"width": 64, "layers": 2, "heads": 4, "feedforward": 128}


def bound(config: dict[str, int], plan: TrainingPlan | None = None) -> BoundApp:
    return bind_unpinned("kv_transformer:app", config, plan or TrainingPlan(), FOLDER)


def test_default_size_is_at_least_5m_parameters() -> None:
    state = bound({}).initial_state()
    assert sum(t.numel() for t in state.values()) >= 5_000_000


def test_task_label_is_the_value_under_the_queried_key() -> None:
    bound(SMALL)
    from kv_transformer.task import Task, sample

    task = Task()
    tokens, labels = sample(task, 500, seed=3)
    assert task.chance == 1 / 16
    for row, label in zip(tokens, labels, strict=True):
        keys, values = row[:-1] // task.values, row[:-1] % task.values
        assert len(set(keys.tolist())) == task.pairs  # distinct keys
        asked = row[-1] - task.keys * task.values
        assert values[keys.tolist().index(asked)] == label
    assert np.bincount(labels, minlength=16).min() > 10  # values uniform: no shortcut


def test_load_data_refuses_a_token_outside_the_vocabulary(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    features = np.zeros((2, 9), np.float32)
    features[1, 4] = 10_000
    np.savez(path, features=features, labels=np.array([0, 1]))
    with pytest.raises(UsageError, match=r"bad.npz: item 1: a token is not an id"):
        bound(SMALL).load_data(path)


def test_a_small_config_learns_retrieval_well_above_chance(tmp_path: Path) -> None:
    plan = TrainingPlan(
        optimizer="adamw",
        lr=0.003,
        batch_size=64,
        local_steps=250,
        grad_clip_norm=1.0,
        holdout_fraction=0.0,
    )
    app = bound(SMALL, plan)
    from kv_transformer.task import Task, write_npz

    train = app.load_data(write_npz(tmp_path / "train.npz", Task(), 4000, seed=1))
    test = app.load_data(write_npz(tmp_path / "test.npz", Task(), 1000, seed=2))
    start = app.initial_state()
    result = app.train_round(start, train, seed=0)
    accuracy = app.evaluate({k: start[k] + result.delta[k] for k in start}, test)["accuracy"]
    assert accuracy > 4 * Task().chance, accuracy  # chance is 0.0625
