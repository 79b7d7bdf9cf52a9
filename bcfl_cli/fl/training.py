"""One member's local round: start from the global model, train on local data, return the delta.

Everything is seeded from one integer: the holdout slice, the batch order and (with DP) the
Poisson sampling and the noise, each from its own generator derived from the seed, so a member
that re-runs a round on CPU gets the same update bit for bit. The returned delta is
``local - global`` in float32 on CPU, the form the contract checks and the aggregation rules
combine; metrics are decimal strings because they travel inside signed transactions.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn
from torch.nn import functional

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.device import pick_device
from bcfl_cli.fl.dp import clipped_noisy_gradient, epsilon_spent
from bcfl_cli.fl.models import build_model, load_state, num_features
from bcfl_cli.fl.sgd import PlainSgd
from bcfl_cli.protocol.spec import ModelSpec, TrainingPlan

#: ``progress(step, total)`` after each optimiser step.
Progress = Callable[[int, int], None]


class StepReport(Protocol):
    """``on_step(step, total, loss)`` after each optimiser step, with the mean training loss
    of the steps since the previous call (None where no loss was formed: DP-SGD), what
    ``bcfl train``'s bar and the node's log show. The shape of ``apps.api.Progress``, so
    one callable serves both."""

    def __call__(self, step: int, total: int, /, loss: float | None = None) -> None: ...


EVAL_BATCH = 4096
#: Below this many parameters a CPU step is dominated by per-operation overhead, and intra-op
#: threads only add contention: measured on a busy 2-core machine, one digits MLP epoch took
#: 0.11 s single-threaded and 1.9-2.7 s with two threads.
SINGLE_THREAD_PARAMS = 2_000_000


@dataclass(frozen=True)
class TrainResult:
    """A local round's delta (a plain dict, or a lazy ``DeltaView`` over the trained model and
    the base weights that computes one tensor at a time), its FedAvg weight and its metrics."""

    delta: Mapping[str, torch.Tensor]
    num_samples: int
    metrics: dict[str, str]


@dataclass(frozen=True)
class LoopStats:
    """What the loop reports besides the trained model: rows trained on and metrics."""

    num_samples: int
    metrics: dict[str, str]


def decimal(value: float, places: int = 6) -> str:
    """A metric as a fixed-point decimal string ("inf" where a DP budget is unbounded)."""
    if math.isinf(value):
        return "inf"
    if math.isnan(value):
        return "nan"
    return f"{value:.{places}f}"


def subseed(seed: int, purpose: str) -> int:
    """Independent generator seeds for each random choice, all derived from one seed."""
    digest = hashlib.sha256(f"bcfl/{purpose}/{seed}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _generator(seed: int, purpose: str) -> torch.Generator:
    return torch.Generator().manual_seed(subseed(seed, purpose))


@contextmanager
def _cpu_threads(device: torch.device, params: int) -> Iterator[None]:
    """Train small models on one CPU thread, restoring the caller's setting afterwards."""
    before = torch.get_num_threads()
    if device.type != "cpu" or params >= SINGLE_THREAD_PARAMS or before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


#: AdamW's decay when the plan names none (torch's default).
ADAMW_DEFAULT_DECAY = 0.01
#: ``lr_gamma`` of a step schedule that names none.
DEFAULT_LR_GAMMA = 0.1


#: What the loop steps: torch's optimiser, or on CPU for SGD the same step without its start.
Stepper = torch.optim.Optimizer | PlainSgd


def _optimizer(plan: TrainingPlan, params: list[nn.Parameter], dev: torch.device) -> Stepper:
    decay = plan.weight_decay
    if plan.optimizer == "adamw":
        return torch.optim.AdamW(
            params, lr=plan.lr, weight_decay=ADAMW_DEFAULT_DECAY if decay is None else decay
        )
    if plan.optimizer == "adam":
        return torch.optim.Adam(params, lr=plan.lr, weight_decay=decay or 0.0)
    if dev.type == "cpu":
        # torch.optim.SGD's CPU arithmetic, bit for bit, without importing torch's compiler
        # stack (~70 MB a process keeps, issue 19): fl/sgd.py
        return PlainSgd(params, lr=plan.lr, momentum=plan.momentum, weight_decay=decay or 0.0)
    return torch.optim.SGD(params, lr=plan.lr, momentum=plan.momentum, weight_decay=decay or 0.0)


def starts_torch_optim(plan: TrainingPlan, device: str | torch.device) -> bool:
    """Whether bcfl's loop, on its first step, imports torch's compiler stack (``torch.optim``'s
    optimisers and ``torch.func``, which DP-SGD uses, import ``torch._dynamo``: ~70 MB a
    process keeps); plain SGD on CPU steps with :class:`PlainSgd` and imports nothing."""
    return plan.optimizer != "sgd" or plan.dp.enabled or torch.device(device).type != "cpu"


def _torch_optimizer(optimizer: Stepper) -> torch.optim.Optimizer:
    """torch's optimiser, what the loss scaler steps (fp16 on CUDA, where PlainSgd is never
    chosen: it is CPU only)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"loss scaling steps a torch optimiser, not a {type(optimizer).__name__}")
    return optimizer


def learning_rate(plan: TrainingPlan, step: int, total: int) -> float:
    """The rate of optimiser step ``step`` (0-based) of ``total`` in a round."""
    if plan.lr_schedule == "cosine":
        return plan.lr * 0.5 * (1.0 + math.cos(math.pi * step / max(total, 1)))
    if plan.lr_schedule == "step":
        gamma = DEFAULT_LR_GAMMA if plan.lr_gamma is None else plan.lr_gamma
        return float(plan.lr * gamma ** (step // (plan.lr_step_size or 1)))
    return plan.lr


def total_steps(plan: TrainingPlan, rows: int) -> int:
    """Optimiser steps a member with ``rows`` training rows takes in one round."""
    if plan.local_steps is not None:
        return plan.local_steps
    return plan.local_epochs * math.ceil(rows / min(plan.batch_size, rows))


def _cast(dev: torch.device, dtype: torch.dtype | None) -> AbstractContextManager[object]:
    if dtype is None:
        return nullcontext()
    return torch.autocast(dev.type, dtype=dtype)


def _autocast(plan: TrainingPlan, dev: torch.device) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for float32, loss scaling?) for the plan on this device."""
    if plan.precision in (None, "fp32") or plan.dp.enabled:
        return None, False
    if dev.type == "cuda" and plan.precision == "fp16":
        return torch.float16, True
    return torch.bfloat16, False


def train_local(
    spec: ModelSpec,
    plan: TrainingPlan,
    global_state: dict[str, torch.Tensor],
    dataset: Dataset,
    *,
    seed: int,
    progress: Progress | None = None,
    on_step: StepReport | None = None,
    device: str | None = None,
) -> TrainResult:
    """Train ``plan.local_epochs`` (or ``plan.local_steps``) on the non-held-out part of
    ``dataset``; returns the delta.

    ``num_samples`` counts the rows trained on (the FedAvg weight). Metrics: ``train_loss``
    (after training, on the training rows), ``eval_loss`` and ``eval_accuracy`` (on the
    held-out rows; absent when the holdout is empty), ``steps``, and with DP ``dp_epsilon``
    and ``dp_delta`` for this update alone.
    """
    dataset.check_fits(num_features(spec), spec.num_classes)
    dev = pick_device(device)
    model = build_model(spec)
    with _cpu_threads(dev, sum(p.numel() for p in model.parameters())):
        train, holdout = dataset.split_holdout(plan.holdout_fraction, subseed(seed, "holdout"))
        if len(train) == 0:
            raise UsageError("no rows left to train on after the holdout")
        load_state(model, {k: v.to(torch.float32) for k, v in global_state.items()})
        model.to(dev)
        stats = _train(model, dev, plan, train, holdout, seed, progress, on_step)
    local = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    delta = {k: (local[k] - global_state[k].to(torch.float32)).contiguous() for k in local}
    return TrainResult(delta, stats.num_samples, stats.metrics)


def _train(
    model: nn.Module,
    dev: torch.device,
    plan: TrainingPlan,
    train: Dataset,
    holdout: Dataset,
    seed: int,
    progress: Progress | None,
    on_step: StepReport | None = None,
) -> LoopStats:
    """Train ``model`` in place; the caller forms the delta (and holds the base weights)."""
    # FedProx's anchor is a copy of the starting weights: only made when the plan uses it
    anchor = (
        {k: v.detach().clone() for k, v in model.named_parameters()} if plan.fedprox_mu > 0 else {}
    )
    params = list(model.parameters())
    optimizer = _optimizer(plan, params, dev)
    x, y = train.features.to(dev), train.labels.to(dev)
    n = len(train)
    batch = min(plan.batch_size, n)
    per_epoch = math.ceil(n / batch)
    total = total_steps(plan, n)
    order_gen = _generator(seed, "order")
    dp = plan.dp
    q = batch / n
    cast, scaled = _autocast(plan, dev)
    scaler = torch.amp.GradScaler("cuda") if scaled else None
    model.train()
    step = 0
    losses: list[float] = []
    while step < total:
        perm = torch.randperm(n, generator=order_gen).to(dev)
        for b in range(per_epoch):
            if step >= total:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(plan, step, total)
            optimizer.zero_grad(set_to_none=True)
            if dp.enabled:
                # Poisson sampling: what the RDP accountant assumes.
                mask = torch.rand(n, generator=order_gen) < q
                idx = mask.nonzero().squeeze(1).to(dev)
                grads = clipped_noisy_gradient(
                    model,
                    functional.cross_entropy,
                    x[idx],
                    y[idx],
                    max_grad_norm=dp.max_grad_norm,
                    noise_multiplier=dp.noise_multiplier,
                    expected_batch=q * n,
                    generator=order_gen,
                )
                for name, p in model.named_parameters():
                    p.grad = grads[name]
                    if plan.fedprox_mu > 0:
                        # data-independent, so adding it after the noise costs no privacy
                        p.grad = p.grad + plan.fedprox_mu * (p.detach() - anchor[name])
            else:
                idx = perm[b * batch : (b + 1) * batch]
                with _cast(dev, cast):
                    loss = functional.cross_entropy(model(x[idx]).float(), y[idx])
                if on_step is not None:
                    losses.append(float(loss.detach()))
                if plan.fedprox_mu > 0:
                    prox = sum(
                        ((p - anchor[name]) ** 2).sum() for name, p in model.named_parameters()
                    )
                    loss = loss + (plan.fedprox_mu / 2.0) * prox
                if scaler is not None:
                    scaler.scale(loss).backward()  # type: ignore[no-untyped-call]
                    scaler.unscale_(_torch_optimizer(optimizer))
                else:
                    loss.backward()  # type: ignore[no-untyped-call]
            if plan.grad_clip_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, plan.grad_clip_norm)
            if scaler is not None:
                scaler.step(_torch_optimizer(optimizer))
                scaler.update()
            else:
                optimizer.step()
            step += 1
            if progress is not None:
                progress(step, total)
            if on_step is not None:
                on_step(step, total, sum(losses) / len(losses) if losses else None)
                losses.clear()
    optimizer.zero_grad(set_to_none=True)  # the gradients are not needed past the last step
    del optimizer
    metrics = {"steps": str(total)}
    train_loss, _ = _evaluate_model(model, train, dev)
    metrics["train_loss"] = decimal(train_loss)
    if len(holdout):
        eval_loss, eval_acc = _evaluate_model(model, holdout, dev)
        metrics["eval_loss"] = decimal(eval_loss)
        metrics["eval_accuracy"] = decimal(eval_acc)
    if dp.enabled:
        eps, _ = epsilon_spent(q, dp.noise_multiplier, total, dp.delta)
        metrics["dp_epsilon"] = decimal(eps, 4)
        metrics["dp_delta"] = repr(dp.delta)
    return LoopStats(n, metrics)


def _evaluate_model(model: nn.Module, data: Dataset, dev: torch.device) -> tuple[float, float]:
    if len(data) == 0:
        raise UsageError("cannot evaluate on an empty dataset")
    model.eval()
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(data), EVAL_BATCH):
            xb = data.features[start : start + EVAL_BATCH].to(dev)
            yb = data.labels[start : start + EVAL_BATCH].to(dev)
            out = model(xb)
            loss_sum += float(functional.cross_entropy(out, yb, reduction="sum"))
            correct += int((out.argmax(1) == yb).sum())
    model.train()
    return loss_sum / len(data), correct / len(data)


def evaluate(
    spec: ModelSpec,
    state: dict[str, torch.Tensor],
    dataset: Dataset,
    *,
    device: str | None = None,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of the model ``state`` on ``dataset``."""
    dataset.check_fits(num_features(spec), spec.num_classes)
    dev = pick_device(device)
    model = build_model(spec)
    load_state(model, {k: v.to(torch.float32) for k, v in state.items()})
    with _cpu_threads(dev, sum(p.numel() for p in model.parameters())):
        return _evaluate_model(model.to(dev), dataset, dev)


def apply_delta(
    state: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """``state + delta`` in float32 (names and shapes must match exactly)."""
    if set(state) != set(delta):
        raise UsageError(f"delta names differ from the model's: {sorted(set(state) ^ set(delta))}")
    out: dict[str, torch.Tensor] = {}
    for k, v in state.items():
        if v.shape != delta[k].shape:
            raise UsageError(f"delta {k!r} has shape {list(delta[k].shape)}, not {list(v.shape)}")
        out[k] = (v.to(torch.float32) + delta[k].to(torch.float32)).contiguous()
    return out
