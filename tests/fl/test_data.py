"""Local CSV loading: strict, bounded, and every refusal says where."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import Dataset, load_csv, read_table


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "d.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_loads_features_and_labels(tmp_path: Path) -> None:
    ds = load_csv(write(tmp_path, "a,label,b\n1,0,2.5\n3,1,-4\n"), "label")
    assert ds.features.dtype == torch.float32 and ds.labels.dtype == torch.int64
    assert ds.features.tolist() == [[1.0, 2.5], [3.0, -4.0]]
    assert ds.labels.tolist() == [0, 1]
    assert ds.label_counts() == {0: 1, 1: 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("a,label\n1,0\nx,1\n", r"line 3, column 'a': 'x' is not a number"),
        ("a,b\n1,0\n", "no label column 'label'"),
        ("a,label\n1,0\n2,1.5\n", r"line 3, column 'label': label '1.5'"),
        ("a,label\n1,-1\n", "label '-1'"),
        ("a,label\n1,0\n2\n", "line 3: 1 fields, the header has 2"),
        ("a,label\nnan,0\n", "is not finite"),
        ("a,label\n1e300,0\n", "overflows float32"),
        ("a,a,label\n1,2,0\n", "duplicate column names"),
        ("a,label\n", "no data rows"),
        ("", "empty file"),
        ("label\n1\n", "no feature columns"),
    ],
)
def test_refusals_name_the_place(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        load_csv(write(tmp_path, text), "label")


def test_checks_fit_with_the_model(tmp_path: Path) -> None:
    path = write(tmp_path, "a,b,label\n1,2,0\n3,4,5\n")
    with pytest.raises(UsageError, match="label 5 is out of range"):
        load_csv(path, "label", num_classes=3)
    with pytest.raises(UsageError, match="expects 3"):
        load_csv(path, "label", num_features=3)
    assert len(load_csv(path, "label", num_classes=6, num_features=2)) == 2


def test_missing_and_binary_files(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="cannot read"):
        read_table(tmp_path / "nope.csv")
    bad = tmp_path / "bin.csv"
    bad.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(UsageError, match="not UTF-8"):
        read_table(bad)


def test_split_holdout_is_seeded_and_disjoint() -> None:
    ds = Dataset(torch.arange(100, dtype=torch.float32).reshape(50, 2), torch.arange(50) % 3)
    train, hold = ds.split_holdout(0.2, seed=4)
    assert (len(train), len(hold)) == (40, 10)
    again = ds.split_holdout(0.2, seed=4)[1]
    assert torch.equal(hold.features, again.features)
    seen = set(train.features[:, 0].tolist()) | set(hold.features[:, 0].tolist())
    assert len(seen) == 50
    assert len(ds.split_holdout(0.0, seed=4)[1]) == 0
    tiny = ds.subset(torch.tensor([0]))
    assert len(tiny.split_holdout(0.9, seed=1)[0]) == 1
