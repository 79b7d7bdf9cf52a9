"""NumPy ``.npz`` archives: one array of features, one of labels, read without pickle."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import Dataset
from bcfl_cli.fl.loaders._checks import check_size, dataset

#: Names tried for each array, first match wins (the label name the genesis fixes comes first).
FEATURE_KEYS = ("features", "x", "X")
LABEL_KEYS = ("labels", "y")


def _pick(path: Path, names: list[str], wanted: tuple[str, ...], what: str) -> str:
    for name in wanted:
        if name in names:
            return name
    raise UsageError(
        f"{path}: no {what} array (looked for {', '.join(repr(w) for w in wanted)}; "
        f"the file has {sorted(names)})"
    )


def load_npz(path: Path, label_key: str = "label") -> Dataset:
    """Features from ``features``/``x``/``X`` (``[N, ...]``), labels from ``label_key``,
    ``labels`` or ``y`` (``[N]``, integers or whole floats). ``allow_pickle`` stays off: an
    object array in the file is refused, never unpickled."""
    path = Path(path)
    check_size(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            fkey = _pick(path, names, FEATURE_KEYS, "features")
            lkey = _pick(path, names, (label_key, *LABEL_KEYS), "labels")
            arrays = {key: archive[key] for key in (fkey, lkey)}
    except UsageError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        # ValueError: an object array (pickle refused) or a malformed array header
        raise UsageError(f"{path}: not a readable .npz archive ({exc})") from exc
    for key, array in arrays.items():
        if array.dtype.kind not in "biuf":
            raise UsageError(f"{path}: array {key!r} has dtype {array.dtype}, expected numbers")
    features = torch.from_numpy(np.ascontiguousarray(arrays[fkey], dtype=np.float64))
    labels = torch.from_numpy(np.ascontiguousarray(arrays[lkey]))
    if labels.dtype == torch.bool:
        labels = labels.to(torch.int64)
    return dataset(path, features, labels, "item")
