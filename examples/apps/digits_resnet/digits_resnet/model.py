"""The network: a ResNet-style stem and three residual stages (64, 128, 256 channels; the
second and third halve the resolution), GroupNorm, global average pooling and a linear head.

GroupNorm, not BatchNorm: BatchNorm's running statistics are buffers that would travel and be
averaged as weights (one of them an integer counter, which the contract refuses), and its batch
statistics differ between members of a non-IID split. With the default widths the model has
1,226,442 parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional


@dataclass(frozen=True)
class Settings:
    """The app's config as the genesis pins it (``[model.app.config]``): integers only."""

    side: int = 8
    classes: int = 10
    widths: tuple[int, ...] = (64, 128, 256)
    groups: int = 8
    seed: int = 0


def config_of(config: Mapping[str, Any]) -> Settings:
    """Settings from the genesis config, refusing keys the app does not know."""
    known = set(Settings.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown} (known: {sorted(known)})")
    values = dict(config)
    if "widths" in values:
        values["widths"] = tuple(int(w) for w in values["widths"])
    settings = Settings(**values)
    if settings.side < 4 or settings.classes < 2 or not settings.widths:
        raise ValueError("side must be >= 4, classes >= 2, and widths non-empty")
    if any(w % settings.groups for w in settings.widths):
        raise ValueError(f"every width must be a multiple of groups ({settings.groups})")
    return settings


class Block(nn.Module):
    """Two 3x3 convolutions with a skip connection (a 1x1 projection when the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.GroupNorm(groups, c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = functional.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return functional.relu(out + self.skip(x))


class DigitsResNet(nn.Module):
    """Flat ``[N, side*side]`` pixel rows in, ``[N, classes]`` logits out."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        self.side = settings.side
        # seeded, in a forked RNG: every member builds the same initial weights
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            first = settings.widths[0]
            self.stem = nn.Sequential(
                nn.Conv2d(1, first, 3, padding=1, bias=False),
                nn.GroupNorm(settings.groups, first),
                nn.ReLU(),
            )
            blocks: list[nn.Module] = []
            c_in = first
            for i, width in enumerate(settings.widths):
                blocks.append(Block(c_in, width, 1 if i == 0 else 2, settings.groups))
                c_in = width
            self.blocks = nn.Sequential(*blocks)
            self.head = nn.Linear(c_in, settings.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(-1, 1, self.side, self.side)
        x = self.blocks(self.stem(x))
        return self.head(x.mean(dim=(2, 3)))
