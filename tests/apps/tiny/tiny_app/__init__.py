"""A two-layer network on 64 numeric features: the smallest useful model app."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class TinyApp:
    @staticmethod
    def build_model(config: dict[str, Any]) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config["seed"])
            return nn.Sequential(
                nn.Linear(config["features"], config["hidden"]),
                nn.Tanh(),
                nn.Linear(config["hidden"], config["classes"]),
            )


app = TinyApp()
