"""A transformer encoder (pre-norm, GELU, no dropout) over the slot and query tokens; the
query position's output is classified into the values.

No dropout: the default loop seeds its own batch order but not torch's global generator, and a
member must be able to re-run a round bit for bit. With the default sizes (width 256, 7 layers,
8 heads, feed-forward 1024) the model has 5,674,512 parameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class Settings:
    """The app config the genesis pins (integers only)."""

    keys: int = 32
    values: int = 16
    pairs: int = 8
    width: int = 256
    layers: int = 7
    heads: int = 8
    feedforward: int = 1024
    seed: int = 0

    @property
    def vocab(self) -> int:
        return self.keys * self.values + self.keys


def config_of(config: Mapping[str, Any]) -> Settings:
    known = set(Settings.__dataclass_fields__)
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown config keys {unknown} (known: {sorted(known)})")
    settings = Settings(**{k: int(v) for k, v in config.items()})
    if settings.width % settings.heads:
        raise ValueError(f"width {settings.width} is not a multiple of heads {settings.heads}")
    if settings.pairs > settings.keys:
        raise ValueError("pairs must not exceed keys (keys are distinct within a sequence)")
    return settings


class KVTransformer(nn.Module):
    """Token ids as float ``[N, pairs + 1]`` in, ``[N, values]`` logits out."""

    def __init__(self, settings: Settings) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed)
            self.tokens = nn.Embedding(settings.vocab, settings.width)
            self.positions = nn.Parameter(torch.randn(settings.pairs + 1, settings.width) * 0.02)
            layer = nn.TransformerEncoderLayer(
                settings.width,
                settings.heads,
                settings.feedforward,
                dropout=0.0,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            self.encoder = nn.TransformerEncoder(layer, settings.layers, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(settings.width)
            self.head = nn.Linear(settings.width, settings.values)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids = x.round().long()
        hidden = self.encoder(self.tokens(ids) + self.positions)
        return self.head(self.norm(hidden[:, -1]))
