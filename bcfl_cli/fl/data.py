"""A member's local data: a CSV file with one label column and numeric feature columns.

The data never leaves the member, but it is still input we did not write: parsing is strict and
bounded, and every refusal names the file, line and column so the user can fix it. Features are
kept as they are in the file (the models squash their inputs themselves, see ``models``); labels
are class indices ``0..num_classes-1``.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from bcfl_cli.errors import UsageError

#: Bounds on what a local CSV may hold: large enough for real tabular data, small enough that a
#: wrong path (a disk image, a log) fails fast instead of filling memory.
MAX_CSV_BYTES = 2 * 1024 * 1024 * 1024
MAX_COLUMNS = 100_000
MAX_ROWS = 10_000_000
MAX_CELL_CHARS = 64
MAX_LABEL = 9_999


@dataclass(frozen=True)
class Table:
    """The validated text of a CSV: header, rows and integer labels (used to split files)."""

    path: Path
    header: list[str]
    label_index: int
    rows: list[list[str]]
    labels: list[int]

    @property
    def feature_names(self) -> list[str]:
        return [h for i, h in enumerate(self.header) if i != self.label_index]


@dataclass(frozen=True)
class Dataset:
    """Features ``[N, D]`` float32 and labels ``[N]`` int64, on CPU."""

    features: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self) -> None:
        if self.features.dtype != torch.float32 or self.labels.dtype != torch.int64:
            raise UsageError("dataset features must be float32 and labels int64")
        if self.features.ndim != 2 or self.labels.ndim != 1:
            raise UsageError("dataset features must be [N, D] and labels [N]")
        if self.features.shape[0] != self.labels.shape[0]:
            raise UsageError("dataset has different numbers of feature rows and labels")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.features.shape[1])

    def subset(self, indices: torch.Tensor) -> Dataset:
        return Dataset(self.features[indices].contiguous(), self.labels[indices].contiguous())

    def label_counts(self) -> dict[int, int]:
        return dict(sorted(Counter(int(v) for v in self.labels.tolist()).items()))

    def split_holdout(self, fraction: float, seed: int) -> tuple[Dataset, Dataset]:
        """(train, holdout): a seeded random ``fraction`` of the rows held out for evaluation.

        The holdout has ``floor(n * fraction)`` rows but never takes the last training row, so
        a tiny member still trains; with fraction 0 the holdout is empty.
        """
        if not 0.0 <= fraction < 1.0:
            raise UsageError(f"holdout fraction must be in [0, 1), got {fraction}")
        n = len(self)
        n_hold = min(math.floor(n * fraction), max(n - 1, 0))
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(n, generator=generator)
        hold, train = order[:n_hold].sort().values, order[n_hold:].sort().values
        return self.subset(train), self.subset(hold)

    def check_fits(self, num_features: int, num_classes: int, *, source: str = "data") -> None:
        """Refuse data the genesis model cannot take, with what was expected and found."""
        if self.num_features != num_features:
            raise UsageError(
                f"{source}: {self.num_features} feature columns, the consortium model "
                f"expects {num_features}"
            )
        if len(self) and int(self.labels.max()) >= num_classes:
            raise UsageError(
                f"{source}: label {int(self.labels.max())} is out of range: the consortium "
                f"model has {num_classes} classes (labels 0..{num_classes - 1})"
            )


def read_table(path: Path, label_column: str = "label") -> Table:
    """Parse and validate a CSV file with a header; every cell must be a finite number."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"{path}: cannot read data file ({exc.strerror})") from exc
    if size > MAX_CSV_BYTES:
        raise UsageError(f"{path}: {size} bytes is more than the {MAX_CSV_BYTES} byte limit")
    csv.field_size_limit(MAX_CELL_CHARS * 4)
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            return _parse(path, csv.reader(handle), label_column)
    except UnicodeDecodeError as exc:
        raise UsageError(f"{path}: not UTF-8 text (is it a CSV file?)") from exc
    except csv.Error as exc:
        raise UsageError(f"{path}: malformed CSV: {exc}") from exc


def _parse(path: Path, rows_iter: Iterator[list[str]], label_column: str) -> Table:
    header = next(rows_iter, None)
    if header is None:
        raise UsageError(f"{path}: empty file, expected a header row")
    header = [h.strip() for h in header]
    if len(header) > MAX_COLUMNS:
        raise UsageError(f"{path}: {len(header)} columns, the limit is {MAX_COLUMNS}")
    if len(set(header)) != len(header):
        dupes = sorted(h for h, c in Counter(header).items() if c > 1)
        raise UsageError(f"{path}: line 1: duplicate column names {dupes}")
    if label_column not in header:
        raise UsageError(
            f"{path}: no label column {label_column!r} in the header",
            hint=f"rename the CSV's label column to {label_column!r} (the name the consortium "
            "fixed in training.label_column; `bcfl data split` also takes --label-column)",
        )
    if len(header) < 2:
        raise UsageError(f"{path}: no feature columns besides {label_column!r}")
    label_index = header.index(label_column)
    rows: list[list[str]] = []
    labels: list[int] = []
    for line, row in enumerate(rows_iter, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise UsageError(
                f"{path}: line {line}: {len(row)} fields, the header has {len(header)}"
            )
        if len(rows) >= MAX_ROWS:
            raise UsageError(f"{path}: more than {MAX_ROWS} rows")
        for col, cell in enumerate(row):
            _check_number(path, line, header[col], cell)
        labels.append(_label(path, line, label_column, row[label_index]))
        rows.append(row)
    if not rows:
        raise UsageError(f"{path}: no data rows after the header")
    return Table(path, header, label_index, rows, labels)


def _check_number(path: Path, line: int, column: str, cell: str) -> float:
    text = cell.strip()
    if len(text) > MAX_CELL_CHARS:
        raise UsageError(f"{path}: line {line}, column {column!r}: cell longer than 64 characters")
    try:
        value = float(text)
    except ValueError:
        raise UsageError(
            f"{path}: line {line}, column {column!r}: {text[:20]!r} is not a number"
        ) from None
    if not math.isfinite(value):
        raise UsageError(f"{path}: line {line}, column {column!r}: {text!r} is not finite")
    return value


def _label(path: Path, line: int, column: str, cell: str) -> int:
    value = float(cell.strip())
    if value != int(value) or not 0 <= value <= MAX_LABEL:
        raise UsageError(
            f"{path}: line {line}, column {column!r}: label {cell.strip()!r} is not a class "
            f"index 0..{MAX_LABEL}"
        )
    return int(value)


def dataset_from_table(table: Table) -> Dataset:
    features = torch.tensor(
        [
            [float(cell) for i, cell in enumerate(row) if i != table.label_index]
            for row in table.rows
        ],
        dtype=torch.float32,
    )
    if not bool(torch.isfinite(features).all()):
        raise UsageError(f"{table.path}: a value overflows float32")
    return Dataset(features, torch.tensor(table.labels, dtype=torch.int64))


def load_csv(
    path: Path,
    label_column: str = "label",
    *,
    num_classes: int | None = None,
    num_features: int | None = None,
) -> Dataset:
    """Load a local data file; with ``num_classes``/``num_features``, also check it fits a model."""
    dataset = dataset_from_table(read_table(Path(path), label_column))
    if num_classes is not None or num_features is not None:
        dataset.check_fits(
            dataset.num_features if num_features is None else num_features,
            max(dataset.label_counts()) + 1 if num_classes is None else num_classes,
            source=str(path),
        )
    return dataset
