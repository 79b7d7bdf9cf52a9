"""bcfl's side of the app interface: whatever an app's hooks do, the result is an AppError that
names the hook and the reason, or an update the contract can check."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from bcfl_cli.apps.runner import BoundApp
from bcfl_cli.errors import AppError
from bcfl_cli.fl.data import Dataset
from bcfl_cli.protocol.spec import TrainingPlan

DATA = Dataset(torch.randn(40, 4, generator=torch.Generator().manual_seed(0)), torch.arange(40) % 3)


class Good:
    @staticmethod
    def build_model(config: Any) -> nn.Module:
        torch.manual_seed(config["seed"])
        return nn.Linear(4, 3)


def bound(obj: Any) -> BoundApp:
    return BoundApp("test:app", obj, {"seed": 0}, TrainingPlan(holdout_fraction=0.0))


def initial() -> dict[str, torch.Tensor]:
    return bound(Good()).initial_state()


def test_the_default_loop_trains_an_app_that_only_builds_its_model() -> None:
    result = bound(Good()).train_round(initial(), DATA, seed=1)
    assert set(result.delta) == {"weight", "bias"} and result.num_samples == 40
    assert float(result.delta["weight"].abs().sum()) > 0
    assert result.metrics["steps"] == "2"
    again = bound(Good()).train_round(initial(), DATA, seed=1)
    assert all(torch.equal(result.delta[k], again.delta[k]) for k in result.delta)


def test_build_model_does_not_move_the_callers_random_state() -> None:
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    bound(Good()).build_model()
    assert torch.equal(before, torch.random.get_rng_state())


class Trains(Good):
    def __init__(self, out: Any) -> None:
        self.out = out

    def train(self, model: nn.Module, data: Any, plan: Any, **_: Any) -> Any:
        if isinstance(self.out, Exception):
            raise self.out
        return self.out(model) if callable(self.out) else self.out


@pytest.mark.parametrize(
    ("out", "message"),
    [
        (ValueError("boom"), "failed in train: ValueError: boom"),
        (lambda m: (m.state_dict(), 0, {}), "0 samples"),
        (lambda m: (m.state_dict(), True, {}), "True samples"),
        (lambda m: ({"weight": m.weight}, 5, {}), "names"),
        (lambda m: ({"weight": torch.zeros(2, 2), "bias": m.bias}, 5, {}), "'weight'"),
        (lambda m: (m.state_dict(), 5, {"Bad Name": 1.0}), "metric name"),
        (lambda m: (m.state_dict(), 5, {"acc": [1]}), "not a number"),
        (lambda m: (m.state_dict(), 5, {"acc": "1e9999x"}), "not a decimal"),
        (lambda m: (m.state_dict(), 5, {f"m{i}": 1 for i in range(25)}), "at most 24"),
        (lambda m: "weights", "TrainOutput"),
    ],
)
def test_a_faulty_train_hook_is_an_app_error_naming_why(out: Any, message: str) -> None:
    with pytest.raises(AppError, match=message.replace("(", r"\(")):
        bound(Trains(out)).train_round(initial(), DATA, seed=1)


def test_an_app_trained_state_becomes_a_float32_delta_with_chain_metrics() -> None:
    def trained(m: nn.Module) -> Any:
        state = {k: v + 1 for k, v in m.state_dict().items()}
        return state, 7, {"accuracy": 0.5, "epochs": 2, "note": "0.25"}

    result = bound(Trains(trained)).train_round(initial(), DATA, seed=1)
    assert all(torch.equal(d, torch.ones_like(d)) for d in result.delta.values())
    assert result.metrics == {"accuracy": "0.500000", "epochs": "2", "note": "0.25"}


class Builds(Good):
    def __init__(self, model: Any) -> None:
        self.model = model

    def build_model(self, config: Any) -> Any:
        return self.model


@pytest.mark.parametrize(
    ("model", "message"),
    [
        ("not a module", "not a torch.nn.Module"),
        (nn.ReLU(), "without weights"),
        (nn.BatchNorm1d(3), "float32"),
        (nn.Linear(2, 2).double(), "float32"),
    ],
)
def test_a_model_bcfl_cannot_average_is_refused(model: Any, message: str) -> None:
    with pytest.raises(AppError, match=message):
        bound(Builds(model)).build_model()


def test_the_builtin_app_refuses_a_csv_that_does_not_fit_naming_the_file() -> None:
    from pathlib import Path

    from bcfl_cli.apps.runner import bind_app
    from bcfl_cli.errors import UsageError
    from bcfl_cli.protocol.spec import ModelSpec

    sample = Path(__file__).resolve().parents[2] / "sample_data" / "digits-test.csv"
    spec = ModelSpec(architecture="mlp", input_shape=[30], num_classes=10)
    with pytest.raises(UsageError, match=r"digits-test\.csv: 64 feature columns.*expects 30"):
        bind_app(spec, TrainingPlan()).load_data(sample)


def test_the_builtin_model_for_a_state_holds_it_and_trains_the_same() -> None:
    """The model a round starts from holds the round's base exactly (its float32 weights read
    from a file straight into the model's memory where they come from one), the round's delta
    is bit for bit the one trained from a model given the base by copying, and a state that
    does not fit is refused."""
    from bcfl_cli.apps.runner import bind_app
    from bcfl_cli.errors import ContractError
    from bcfl_cli.protocol.spec import ModelSpec

    spec = ModelSpec(architecture="mlp", input_shape=[4], num_classes=3, hidden=[8, 5], seed=3)
    app = bind_app(spec, TrainingPlan(holdout_fraction=0.0))
    base = {k: v * 1.5 + 0.125 for k, v in app.initial_state().items()}
    initialised = app.train_round(base, DATA, seed=1)
    model = app.model_with(base)
    assert all(model.state_dict()[k].equal(v) for k, v in base.items())
    trained = app.train_round(base, DATA, seed=1)
    assert set(trained.delta) == set(initialised.delta)
    for name in initialised.delta:
        assert (
            trained.delta[name].view(torch.int32).equal(initialised.delta[name].view(torch.int32))
        )
    assert trained.metrics == initialised.metrics
    foreign = {k: v for k, v in base.items() if k != "out.bias"}
    with pytest.raises(ContractError, match="wrong_shape"):
        app.model_with(foreign)


def test_an_apps_own_model_for_a_state_is_built_by_the_app() -> None:
    built: list[int] = []

    class Counting(Good):
        @staticmethod
        def build_model(config: Any) -> nn.Module:
            built.append(1)
            return Good.build_model(config)

    app = bound(Counting())
    state = {k: v + 1 for k, v in app.initial_state().items()}
    model = app.model_with(state)
    assert len(built) == 2 and all(model.state_dict()[k].equal(v) for k, v in state.items())
