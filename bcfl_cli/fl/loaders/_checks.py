"""Checks every reader shares: the file's size, finite features, class-index labels."""

from __future__ import annotations

from pathlib import Path

import torch

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import MAX_CSV_BYTES, MAX_LABEL, MAX_ROWS, Dataset

#: The largest local data file any reader opens (the CSV reader's bound, for every format).
MAX_DATA_BYTES = MAX_CSV_BYTES


def check_size(path: Path) -> None:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"{path}: cannot read data file ({exc.strerror})") from exc
    if size > MAX_DATA_BYTES:
        raise UsageError(f"{path}: {size} bytes is more than the {MAX_DATA_BYTES} byte limit")


def dataset(path: Path, features: torch.Tensor, labels: torch.Tensor, item: str) -> Dataset:
    """``features`` ``[N, ...]`` (flattened to ``[N, D]`` float32) and integer ``labels`` ``[N]``,
    refused with the first bad ``item`` (row, entry) named."""
    n = int(labels.shape[0]) if labels.ndim == 1 else -1
    if labels.ndim != 1:
        raise UsageError(
            f"{path}: labels must be one value per {item}, got shape " f"{list(labels.shape)}"
        )
    if n == 0:
        raise UsageError(f"{path}: no data ({item}s) in the file")
    if n > MAX_ROWS:
        raise UsageError(f"{path}: {n} {item}s, more than the {MAX_ROWS} limit")
    if features.ndim < 1 or int(features.shape[0]) != n:
        raise UsageError(
            f"{path}: {n} labels but features of shape {list(features.shape)} "
            f"(expected {n} {item}s)"
        )
    if labels.dtype.is_floating_point:
        whole = torch.isfinite(labels) & (labels == labels.round())
        if not bool(whole.all()):
            bad = int((~whole).nonzero()[0, 0])
            raise UsageError(
                f"{path}: {item} {bad}: label {labels[bad].item()!r} is not a class index"
            )
    labels64 = labels.to(torch.int64)
    out_of_range = (labels64 < 0) | (labels64 > MAX_LABEL)
    if bool(out_of_range.any()):
        bad = int(out_of_range.nonzero()[0, 0])
        raise UsageError(
            f"{path}: {item} {bad}: label {int(labels64[bad])} is not a class index "
            f"0..{MAX_LABEL}"
        )
    flat = features.reshape(n, -1).to(torch.float32)
    finite = torch.isfinite(flat).all(dim=1)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise UsageError(
            f"{path}: {item} {bad}: a feature is not finite (NaN, inf, or " "beyond float32)"
        )
    return Dataset(flat.contiguous(), labels64.contiguous())
