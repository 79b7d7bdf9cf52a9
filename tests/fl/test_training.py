"""Local training: seeded and reproducible on CPU, honest deltas, DP accounting pinned."""

from __future__ import annotations

import math

import pytest
import torch

from bcfl_cli.errors import UsageError
from bcfl_cli.fl import models
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.dp import clipped_noisy_gradient, epsilon_spent, rdp_sampled_gaussian
from bcfl_cli.fl.training import apply_delta, evaluate, train_local
from bcfl_cli.protocol.spec import DPSpec, ModelSpec, TrainingPlan

SPEC = ModelSpec(architecture="mlp", input_shape=[8], num_classes=3, hidden=[16], seed=3)


def toy(n: int = 240, seed: int = 0) -> Dataset:
    """Three separable blobs in 8 dimensions: learnable in one epoch."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    centres = torch.eye(3, 8) * 3.0
    features = centres[labels] + 0.5 * torch.randn(n, 8, generator=g)
    return Dataset(features.to(torch.float32), labels.to(torch.int64))


def plan(**kw: object) -> TrainingPlan:
    base: dict[str, object] = {"lr": 0.3, "batch_size": 16, "local_epochs": 1}
    base.update(kw)
    return TrainingPlan.model_validate(base)


def test_reproducible_and_learns() -> None:
    g = models.initial_state(SPEC)
    data = toy()
    first = train_local(SPEC, plan(), g, data, seed=5, device="cpu")
    again = train_local(SPEC, plan(), g, data, seed=5, device="cpu")
    assert models.state_bytes(first.delta) == models.state_bytes(again.delta)
    assert first.metrics == again.metrics
    other = train_local(SPEC, plan(), g, data, seed=6, device="cpu")
    assert models.state_bytes(other.delta) != models.state_bytes(first.delta)
    assert first.num_samples == 192  # 20% held out
    assert set(first.metrics) == {"steps", "train_loss", "eval_loss", "eval_accuracy"}
    assert float(first.metrics["eval_accuracy"]) > 0.9
    assert all(v.dtype == torch.float32 for v in first.delta.values())
    before, _ = evaluate(SPEC, g, data, device="cpu")
    after, acc = evaluate(SPEC, apply_delta(g, first.delta), data, device="cpu")
    assert after < before and acc > 0.9


def test_progress_and_optimizers() -> None:
    calls: list[tuple[int, int]] = []
    g = models.initial_state(SPEC)
    threads = torch.get_num_threads()
    result = train_local(
        SPEC,
        plan(optimizer="adam", lr=0.01, local_epochs=2, holdout_fraction=0.0),
        g,
        toy(64),
        seed=1,
        progress=lambda s, t: calls.append((s, t)),
        device="cpu",
    )
    assert calls == [(s, 8) for s in range(1, 9)]
    assert torch.get_num_threads() == threads  # the single-thread switch is undone
    assert "eval_loss" not in result.metrics and result.num_samples == 64
    sgd = train_local(SPEC, plan(momentum=0.9), g, toy(64), seed=1, device="cpu")
    assert float(sgd.metrics["train_loss"]) < math.log(3)


def test_fedprox_pulls_towards_the_global_model() -> None:
    g = models.initial_state(SPEC)
    free = train_local(SPEC, plan(local_epochs=3), g, toy(), seed=2, device="cpu")
    prox = train_local(SPEC, plan(local_epochs=3, fedprox_mu=5.0), g, toy(), seed=2, device="cpu")

    def norm(d: dict[str, torch.Tensor]) -> float:
        return math.sqrt(sum(float(v.double().pow(2).sum()) for v in d.values()))

    assert norm(prox.delta) < norm(free.delta)


def test_refuses_data_that_does_not_fit() -> None:
    g = models.initial_state(SPEC)
    wrong = Dataset(torch.zeros(10, 5), torch.zeros(10, dtype=torch.int64))
    with pytest.raises(UsageError, match="expects 8"):
        train_local(SPEC, plan(), g, wrong, seed=1, device="cpu")
    with pytest.raises(UsageError, match="delta names"):
        apply_delta(g, {})


# --- differential privacy -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("q", "sigma", "steps", "delta", "expected"),
    [
        # Values computed with Opacus 1.6 (opacus/accountants/analysis/rdp.py: compute_rdp +
        # get_privacy_spent) over the same integer orders.
        (256 / 60000, 1.1, 60 * 235, 1e-5, 2.6007181389429386),
        (0.01, 1.0, 1000, 1e-5, 2.107753075451561),
        (32 / 287, 1.0, 9, 1e-5, 3.7749955024865214),
        (0.5, 2.0, 10, 1e-6, 4.944426122294664),
    ],
)
def test_accountant_matches_opacus(
    q: float, sigma: float, steps: int, delta: float, expected: float
) -> None:
    eps, _ = epsilon_spent(q, sigma, steps, delta)
    assert eps == pytest.approx(expected, rel=1e-9)


def test_accountant_edge_cases() -> None:
    assert rdp_sampled_gaussian(1.0, 2.0, 4) == pytest.approx(4 / 8)  # plain Gaussian: a/(2s^2)
    assert rdp_sampled_gaussian(0.0, 1.0, 4) == 0.0
    assert epsilon_spent(0.1, 0.0, 10, 1e-5)[0] == math.inf
    assert epsilon_spent(0.1, 1.0, 0, 1e-5)[0] == 0.0
    few, _ = epsilon_spent(0.1, 1.0, 10, 1e-5)
    many, _ = epsilon_spent(0.1, 1.0, 100, 1e-5)
    assert few < many


def test_per_example_clipping_bounds_each_contribution() -> None:
    model = models.build_model(SPEC)
    data = toy(16)
    grads = clipped_noisy_gradient(
        model,
        torch.nn.functional.cross_entropy,
        data.features,
        data.labels,
        max_grad_norm=0.01,
        noise_multiplier=0.0,
        expected_batch=16.0,
        generator=torch.Generator().manual_seed(0),
    )
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    assert total <= 0.01 + 1e-6  # the mean of vectors of norm <= C has norm <= C


def test_dp_training_reports_budget_and_is_reproducible() -> None:
    g = models.initial_state(SPEC)
    p = plan(dp=DPSpec(enabled=True, noise_multiplier=1.0, max_grad_norm=1.0, delta=1e-5))
    a = train_local(SPEC, p, g, toy(), seed=9, device="cpu")
    b = train_local(SPEC, p, g, toy(), seed=9, device="cpu")
    assert models.state_bytes(a.delta) == models.state_bytes(b.delta)
    eps, _ = epsilon_spent(16 / 192, 1.0, 12, 1e-5)
    assert a.metrics["dp_epsilon"] == f"{eps:.4f}" and a.metrics["dp_delta"] == "1e-05"
