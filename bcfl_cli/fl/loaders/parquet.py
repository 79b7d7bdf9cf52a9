"""Parquet files through pyarrow (the optional extra ``bcfl[parquet]``): a label column and
numeric feature columns, as in a CSV."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import MAX_COLUMNS, Dataset
from bcfl_cli.fl.loaders._checks import check_size, dataset


def _pyarrow_parquet(path: Path) -> Any:
    try:
        import pyarrow.parquet as pq  # type: ignore[import-untyped]
    except ImportError as exc:
        raise UsageError(
            f"{path}: reading Parquet needs pyarrow, which is not installed",
            hint="pip install 'bcfl[parquet]'",
        ) from exc
    return pq


def load_parquet(path: Path, label_column: str = "label") -> Dataset:
    """Every column but ``label_column`` is a feature; nulls and non-numeric columns are
    refused with the column (and for nulls the first row) named."""
    path = Path(path)
    check_size(path)
    pq = _pyarrow_parquet(path)
    try:
        schema = pq.read_schema(path)
        if len(schema.names) > MAX_COLUMNS:
            raise UsageError(f"{path}: {len(schema.names)} columns, the limit is {MAX_COLUMNS}")
        table = pq.read_table(path)
    except UsageError:
        raise
    except Exception as exc:  # pyarrow's ArrowInvalid, OSError...: any unreadable file
        raise UsageError(f"{path}: not a readable Parquet file ({exc})") from exc
    names = list(table.column_names)
    if len(set(names)) != len(names):
        raise UsageError(f"{path}: duplicate column names")
    if label_column not in names:
        raise UsageError(
            f"{path}: no label column {label_column!r} (columns: {names[:10]})",
            hint=f"name the label column {label_column!r} (the genesis' training.label_column)",
        )
    if len(names) < 2:
        raise UsageError(f"{path}: no feature columns besides {label_column!r}")
    columns: dict[str, np.ndarray] = {}
    for name in names:
        column = table.column(name)
        if column.null_count:
            mask = column.is_null().to_numpy(zero_copy_only=False)
            row = int(np.flatnonzero(mask)[0])
            raise UsageError(f"{path}: row {row}, column {name!r}: missing value (null)")
        values = column.to_numpy(zero_copy_only=False)
        if values.dtype.kind not in "biuf":
            raise UsageError(f"{path}: column {name!r} has type {column.type}, expected numbers")
        columns[name] = values
    features = np.stack([columns[n].astype(np.float64) for n in names if n != label_column], axis=1)
    labels = columns[label_column]
    return dataset(
        path,
        torch.from_numpy(np.ascontiguousarray(features)),
        torch.from_numpy(np.ascontiguousarray(labels.astype(np.float64))),
        "row",
    )
