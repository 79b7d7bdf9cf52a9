"""``bcfl app check``: does this app build, load sample data and train, and what will it pin?

It runs what a member's node will run, on a sample: build the model (the initial weights), load
the data with the app's loader, one training step (the sample cut to one batch, no holdout)
through the same code that makes a real update, the update's size as safetensors, and the
evaluation of the trained model. Nothing is written.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bcfl_cli.apps.project import pin_for, read_project
from bcfl_cli.apps.runner import bind_unpinned
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.models import state_bytes
from bcfl_cli.fl.training import apply_delta
from bcfl_cli.protocol.spec import AppPin, TrainingPlan


@dataclass(frozen=True)
class AppCheck:
    folder: Path
    pin: AppPin
    parameters: int
    update_bytes: int
    samples: int
    metrics: dict[str, str]
    evaluation: dict[str, float]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": str(self.folder),
            "entry_point": self.pin.entry_point,
            "manifest": self.pin.manifest,
            "initial_model": self.pin.initial_model,
            "parameters": self.parameters,
            "update_bytes": self.update_bytes,
            "samples": self.samples,
            "metrics": self.metrics,
            "evaluation": self.evaluation,
            "seconds": round(self.seconds, 3),
            "pin": self.pin.to_document(),
        }


def check_app(
    folder: Path, data_path: Path, *, seed: int = 0, device: str | None = None
) -> AppCheck:
    """Build, load, train one step and measure the app in ``folder`` on ``data_path``."""
    started = time.monotonic()
    project = read_project(folder)
    plan = TrainingPlan(local_epochs=1, holdout_fraction=0.0)
    app = bind_unpinned(project.entry_point, project.config, plan, project.folder)
    pin = pin_for(project, app)
    data = app.load_data(Path(data_path))
    if isinstance(data, Dataset):  # one batch: exactly one step of the default loop
        data = data.subset(torch.arange(min(len(data), plan.batch_size)))
    initial = app.initial_state()
    result = app.train_round(initial, data, seed=seed, device=device or "cpu")
    delta = dict(result.delta)
    trained = apply_delta(initial, delta)
    return AppCheck(
        folder=project.folder,
        pin=pin,
        parameters=sum(t.numel() for t in initial.values()),
        update_bytes=len(state_bytes(delta)),
        samples=result.num_samples,
        metrics=result.metrics,
        evaluation=app.evaluate(trained, data),
        seconds=time.monotonic() - started,
    )
