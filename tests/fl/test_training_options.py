"""The default loop's options, each a key of the genesis' training plan: validated with the key
named, absent = the loop (and the genesis bytes) of before, seeded and reproducible on CPU."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from bcfl_cli.fl import models
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.device import pick_device
from bcfl_cli.fl.training import learning_rate, total_steps, train_local
from bcfl_cli.protocol.spec import OPTIONAL_PLAN_KEYS, ModelSpec, TrainingPlan

SPEC = ModelSpec(architecture="mlp", input_shape=[8], num_classes=3, hidden=[16], seed=3)


def toy(n: int = 96, seed: int = 0) -> Dataset:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 3
    features = torch.eye(3, 8)[labels] * 3.0 + 0.5 * torch.randn(n, 8, generator=g)
    return Dataset(features.to(torch.float32), labels.to(torch.int64))


def plan(**kw: Any) -> TrainingPlan:
    base: dict[str, Any] = {"lr": 0.3, "batch_size": 16, "holdout_fraction": 0.0}
    base.update(kw)
    return TrainingPlan.model_validate(base)


def norm(delta: dict[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float(v.double().pow(2).sum()) for v in delta.values()))


# --- the plan ---------------------------------------------------------------------------------
def test_unset_options_stay_out_of_the_genesis_document() -> None:
    document = TrainingPlan().to_document()
    assert not set(OPTIONAL_PLAN_KEYS[2:]) & set(document)
    set_all = plan(
        optimizer="adamw",
        weight_decay=0.05,
        lr_schedule="step",
        lr_step_size=4,
        lr_gamma=0.5,
        local_steps=7,
        grad_clip_norm=1.5,
        precision="bf16",
    ).to_document()
    assert set_all["weight_decay"] == "0.05" and set_all["lr_gamma"] == "0.5"
    assert set_all["local_steps"] == 7 and set_all["precision"] == "bf16"
    assert TrainingPlan.model_validate(set_all) == TrainingPlan.model_validate(set_all)


@pytest.mark.parametrize(
    ("keys", "named"),
    [
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"weight_decay": -0.1}, "weight_decay"),
        ({"lr_schedule": "linear"}, "lr_schedule"),
        ({"lr_schedule": "step"}, "lr_step_size"),
        ({"lr_step_size": 3}, "lr_step_size"),
        ({"lr_schedule": "cosine", "lr_gamma": 0.5}, "lr_gamma"),
        ({"lr_schedule": "step", "lr_step_size": 2, "lr_gamma": 1.5}, "lr_gamma"),
        ({"local_steps": 0}, "local_steps"),
        ({"grad_clip_norm": 0}, "grad_clip_norm"),
        ({"precision": "int8"}, "precision"),
        ({"momentun": 0.9}, "momentun"),
    ],
)
def test_bad_options_are_refused_naming_the_key(keys: dict[str, Any], named: str) -> None:
    with pytest.raises(ValidationError, match=named):
        plan(**keys)


@given(
    lr=st.floats(1e-4, 1.0),
    total=st.integers(1, 500),
    size=st.integers(1, 50),
    gamma=st.floats(0.01, 1.0),
)
def test_schedules(lr: float, total: int, size: int, gamma: float) -> None:
    constant = plan(lr=lr)
    cosine = plan(lr=lr, lr_schedule="cosine")
    stepped = plan(lr=lr, lr_schedule="step", lr_step_size=size, lr_gamma=gamma)
    rates = [learning_rate(cosine, s, total) for s in range(total)]
    assert rates[0] == pytest.approx(lr) and all(0 <= r <= lr for r in rates)
    assert all(a >= b for a, b in zip(rates, rates[1:], strict=False))
    assert all(learning_rate(constant, s, total) == lr for s in range(total))
    assert learning_rate(stepped, size - 1, total) == pytest.approx(lr)
    assert learning_rate(stepped, size, total) == pytest.approx(lr * gamma)


def test_steps_replace_epochs() -> None:
    assert total_steps(plan(local_epochs=2), 96) == 12
    assert total_steps(plan(local_epochs=2, local_steps=5), 96) == 5
    assert total_steps(plan(local_steps=30), 10) == 30  # cycles through a small member's data


# --- the loop ---------------------------------------------------------------------------------
def test_every_option_trains_reproducibly_and_reports_the_loss() -> None:
    full = plan(
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.1,
        lr_schedule="cosine",
        local_steps=20,
        grad_clip_norm=1.0,
        precision="bf16",
    )
    g = models.initial_state(SPEC)
    reports: list[tuple[int, int, float]] = []
    first = train_local(
        SPEC, full, g, toy(), seed=4, device="cpu", on_step=lambda *r: reports.append(r)
    )
    again = train_local(SPEC, full, g, toy(), seed=4, device="cpu")
    assert models.state_bytes(first.delta) == models.state_bytes(again.delta)
    assert [(s, t) for s, t, _ in reports] == [(s, 20) for s in range(1, 21)]
    assert reports[-1][2] < reports[0][2] and first.metrics["steps"] == "20"
    assert all(v.dtype == torch.float32 for v in first.delta.values())
    fp32 = train_local(SPEC, full.model_copy(update={"precision": None}), g, toy(), seed=4)
    assert models.state_bytes(fp32.delta) != models.state_bytes(first.delta)


def test_the_default_loop_is_unchanged_by_the_new_code() -> None:
    """Options spelled at their neutral values give the bytes of a plan without them."""
    g = models.initial_state(SPEC)
    bare = train_local(SPEC, plan(momentum=0.5), g, toy(), seed=9, device="cpu")
    neutral = plan(momentum=0.5, lr_schedule="constant", precision="fp32", weight_decay=0.0)
    spelled = train_local(SPEC, neutral, g, toy(), seed=9, device="cpu")
    assert models.state_bytes(bare.delta) == models.state_bytes(spelled.delta)


def test_gradient_clipping_bounds_a_step() -> None:
    g = models.initial_state(SPEC)
    one = {"lr": 1.0, "local_steps": 1, "batch_size": 96}
    free = train_local(SPEC, plan(**one), g, toy(), seed=1, device="cpu")
    clipped = train_local(SPEC, plan(**one, grad_clip_norm=0.01), g, toy(), seed=1)
    assert norm(clipped.delta) == pytest.approx(0.01, rel=1e-3)
    assert norm(free.delta) > 0.1


def test_weight_decay_shrinks_the_weights() -> None:
    g = models.initial_state(SPEC)
    for name in ("sgd", "adam", "adamw"):
        kw = {"optimizer": name, "lr": 0.01, "local_steps": 10}
        plain = train_local(SPEC, plan(**kw, weight_decay=0.0), g, toy(), seed=2, device="cpu")
        decayed = train_local(SPEC, plan(**kw, weight_decay=5.0), g, toy(), seed=2, device="cpu")

        def size(delta: dict[str, torch.Tensor]) -> float:
            return norm({k: g[k] + delta[k] for k in g})

        assert size(decayed.delta) < size(plain.delta), name


def test_dp_keeps_its_epsilon_with_local_steps() -> None:
    dp = plan(local_steps=6, grad_clip_norm=5.0, dp={"enabled": True})
    result = train_local(SPEC, dp, models.initial_state(SPEC), toy(), seed=3, device="cpu")
    assert result.metrics["steps"] == "6" and float(result.metrics["dp_epsilon"]) > 0


def test_device_auto() -> None:
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert pick_device("auto").type == expected


def test_fp16_on_a_cpu_trains_with_bf16() -> None:
    """fp16 autocast needs CUDA (and loss scaling); a CPU member of an fp16 consortium uses
    bf16, the CPU's half type, rather than refusing to train."""
    g = models.initial_state(SPEC)
    half = train_local(SPEC, plan(precision="fp16", local_steps=3), g, toy(), seed=5, device="cpu")
    bf16 = train_local(SPEC, plan(precision="bf16", local_steps=3), g, toy(), seed=5, device="cpu")
    assert models.state_bytes(half.delta) == models.state_bytes(bf16.delta)
