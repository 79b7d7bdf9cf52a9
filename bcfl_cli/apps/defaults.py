"""bcfl's defaults for the hooks an app leaves out: today's loader, loop and evaluation.

An app that defines only ``build_model`` gets exactly what the builtin architectures get: the
member's CSV (``training.label_column`` names the label) as a :class:`Dataset`, the plan's
optimizer with FedProx and DP-SGD, cross-entropy, a seeded holdout for ``eval_*`` metrics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from bcfl_cli.apps.api import AppConfig, Metrics, Progress, TrainOutput
from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.device import pick_device
from bcfl_cli.fl.loaders import load_dataset
from bcfl_cli.fl.training import _cpu_threads, _evaluate_model, _train, subseed
from bcfl_cli.protocol.spec import TrainingPlan


def load_data(path: Path, config: AppConfig, plan: TrainingPlan) -> Dataset:
    """The member's data (CSV, ``.npz``, Parquet or a folder of images by class, by the path);
    every refusal names the file and the row or item."""
    del config  # the default loader reads the training plan's label column only
    return load_dataset(Path(path), plan.label_column)


def as_dataset(data: Any) -> Dataset:
    if not isinstance(data, Dataset):
        raise UsageError(
            f"bcfl's default training takes a Dataset, the app's load_data gave a "
            f"{type(data).__name__}: give the app its own train and evaluate"
        )
    return data


def train(
    model: nn.Module,
    data: Any,
    plan: TrainingPlan,
    *,
    seed: int,
    device: str,
    progress: Progress | None,
) -> TrainOutput:
    """The plan's local epochs on the non-held-out rows; the trained weights and metrics."""
    dataset = as_dataset(data)
    dev = pick_device(device)
    with _cpu_threads(dev, sum(p.numel() for p in model.parameters())):
        rows, holdout = dataset.split_holdout(plan.holdout_fraction, subseed(seed, "holdout"))
        if len(rows) == 0:
            raise UsageError("no rows left to train on after the holdout")
        model.to(dev)
        # the app's progress takes the loss too: it is the loop's per-step report
        result = _train(model, dev, plan, rows, holdout, seed, None, on_step=progress)
    weights = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    return TrainOutput(weights, result.num_samples, result.metrics)


def evaluate(model: nn.Module, data: Any, device: str | None = None) -> Metrics:
    """Mean cross-entropy and accuracy over the whole data set."""
    dataset = as_dataset(data)
    dev = pick_device(device)
    with _cpu_threads(dev, sum(p.numel() for p in model.parameters())):
        loss, accuracy = _evaluate_model(model.to(dev), dataset, dev)
    return {"loss": loss, "accuracy": accuracy}
