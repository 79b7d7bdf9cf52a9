"""A member's local data in the formats members hold, each read into one ``Dataset``.

``load_dataset`` picks the reader from the path: a folder is images by class, else the file's
suffix names the format (``.csv``, ``.npz``, ``.parquet``/``.pq``). Every reader is strict and
bounded, and every refusal is a ``UsageError`` naming the file and the row or item, so the user
knows what to fix. Features come out as flat float32 rows ``[N, D]`` (the models reshape them),
labels as class indices ``0..num_classes-1``. Data never leaves the member, but it is still
input bcfl did not write: no reader unpickles anything.
"""

from __future__ import annotations

from pathlib import Path

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import Dataset, load_csv
from bcfl_cli.fl.loaders.images import load_image_folder
from bcfl_cli.fl.loaders.npz import load_npz
from bcfl_cli.fl.loaders.parquet import load_parquet

#: The formats ``load_dataset`` reads, by file suffix (a folder is a folder of images).
SUFFIXES: dict[str, str] = {".csv": "csv", ".npz": "npz", ".parquet": "parquet", ".pq": "parquet"}

__all__ = [
    "SUFFIXES",
    "data_format",
    "load_csv",
    "load_dataset",
    "load_image_folder",
    "load_npz",
    "load_parquet",
]


def data_format(path: Path) -> str:
    """``csv``, ``npz``, ``parquet`` or ``images``, from the path alone."""
    path = Path(path)
    if path.is_dir():
        return "images"
    found = SUFFIXES.get(path.suffix.lower())
    if found is None:
        raise UsageError(
            f"{path}: unknown data format {path.suffix or '(no suffix)'!r}",
            hint="use a .csv, .npz or .parquet file, or a folder with one sub-folder per class",
        )
    return found


def load_dataset(
    path: Path,
    label_column: str = "label",
    *,
    num_classes: int | None = None,
    input_shape: list[int] | None = None,
) -> Dataset:
    """This member's data from ``path``; with ``num_classes``/``input_shape``, checked to fit.

    ``label_column`` names the label column of a CSV or Parquet file and the label array of an
    ``.npz`` (``labels`` and ``y`` are accepted there too); images take their label from their
    class folder's name.
    """
    path = Path(path)
    if not path.exists():
        raise UsageError(f"{path}: no such data file or folder")
    fmt = data_format(path)
    num_features = None
    if input_shape is not None:
        num_features = 1
        for d in input_shape:
            num_features *= d
    dataset: Dataset
    if fmt == "csv":
        return load_csv(path, label_column, num_classes=num_classes, num_features=num_features)
    if fmt == "npz":
        dataset = load_npz(path, label_column)
    elif fmt == "parquet":
        dataset = load_parquet(path, label_column)
    else:
        dataset = load_image_folder(path, input_shape)
    if num_classes is not None or num_features is not None:
        dataset.check_fits(
            dataset.num_features if num_features is None else num_features,
            max(dataset.label_counts()) + 1 if num_classes is None else num_classes,
            source=str(path),
        )
    return dataset
