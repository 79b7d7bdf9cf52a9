"""The builtin app: the ``logreg``, ``mlp`` and ``cnn`` architectures on numeric CSV rows.

Its config is the genesis' ``[model]`` table itself (architecture, input_shape, num_classes,
hidden, seed), so every genesis written before model apps is a genesis of this app, with the
same document and hash. It is shipped inside bcfl and pinned by bcfl's own version, not by a
manifest. It keeps bcfl's CSV loader, loop and evaluation, adding the check that the data's columns
and labels fit the architecture (an error that names the file, what was expected and found).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from torch import nn

from bcfl_cli.apps import defaults
from bcfl_cli.apps.api import AppConfig, Metrics, Progress, TrainOutput
from bcfl_cli.fl import models
from bcfl_cli.fl.data import Dataset, load_csv
from bcfl_cli.protocol.spec import ModelSpec, TrainingPlan

ENTRY_POINT = "bcfl_cli.apps.builtin:app"


def _spec(config: AppConfig) -> ModelSpec:
    return ModelSpec.model_validate(dict(config))


class BuiltinApp:
    """Today's architectures as a model app (see the module docstring).

    ``label_column`` is the genesis' ``training.label_column`` (bcfl binds one app per genesis);
    the module's ``app`` reads the default, ``label``.
    """

    def __init__(self, label_column: str = "label") -> None:
        self.label_column = label_column

    def load_data(self, path: Path, config: AppConfig) -> Dataset:
        """The member's CSV, checked against the architecture: the refusal names the file."""
        spec = _spec(config)
        return load_csv(
            Path(path),
            self.label_column,
            num_classes=spec.num_classes,
            num_features=models.num_features(spec),
        )

    @staticmethod
    def build_model(config: AppConfig) -> nn.Module:
        return models.build_model(_spec(config))

    @staticmethod
    def _fits(model: nn.Module, data: Any) -> None:
        """Columns and labels the architecture takes, read off the model it built."""
        unflatten, out = getattr(model, "unflatten", None), getattr(model, "out", None)
        if isinstance(unflatten, nn.Unflatten) and isinstance(out, nn.Linear):
            features = math.prod(int(d) for d in unflatten.unflattened_size)
            defaults.as_dataset(data).check_fits(features, out.out_features)

    def train(
        self,
        model: nn.Module,
        data: Any,
        plan: TrainingPlan,
        *,
        seed: int,
        device: str,
        progress: Progress | None,
    ) -> TrainOutput:
        self._fits(model, data)
        return defaults.train(model, data, plan, seed=seed, device=device, progress=progress)

    def evaluate(self, model: nn.Module, data: Any) -> Metrics:
        self._fits(model, data)
        return defaults.evaluate(model, data)


app = BuiltinApp()
