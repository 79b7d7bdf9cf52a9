"""Where local training runs: CUDA when present, else CPU; ``BCFL_DEVICE`` overrides.

Only local training uses the accelerator. Anything every peer must recompute bit for bit
(aggregation, the contract) stays on CPU, and updates are always moved back to CPU float32.
"""

from __future__ import annotations

import os

import torch

from bcfl_cli.errors import UsageError


def pick_device(requested: str | None = None) -> torch.device:
    """``requested`` (or $BCFL_DEVICE): "cpu", "cuda", "cuda:N", or "auto" (the default):
    CUDA if available, else CPU."""
    name = requested or os.environ.get("BCFL_DEVICE") or ""
    if not name or name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device {name!r}; use cpu, cuda[:N] or auto") from exc
    if device.type not in ("cpu", "cuda"):
        raise UsageError(f"unsupported device {name!r}; use cpu, cuda[:N] or auto")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device {name!r} requested but CUDA is not available")
    return device
