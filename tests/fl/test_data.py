"""Local CSV loading: strict, bounded, and every refusal says where."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import Dataset, load_csv, read_table
from bcfl_cli.fl.split import (
    member_file_name,
    partition_dirichlet,
    partition_iid,
    split_csv,
    stratified_holdout,
)


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


# --- partitions ----------------------------------------------------------------------------

labels_strategy = st.lists(st.integers(0, 4), min_size=20, max_size=300)


def _check_cover(parts: list[list[int]], n: int) -> None:
    flat = [i for p in parts for i in p]
    assert len(flat) == len(set(flat)) == n
    assert set(flat) == set(range(n))


@settings(max_examples=40, deadline=None)
@given(labels_strategy, st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_iid_partition_disjoint_covering_deterministic(
    labels: list[int], members: int, seed: int
) -> None:
    part = partition_iid(labels, members, seed)
    _check_cover(part.parts, len(labels))
    assert max(map(len, part.parts)) - min(map(len, part.parts)) <= 1
    assert partition_iid(labels, members, seed).parts == part.parts


@settings(max_examples=40, deadline=None)
@given(
    labels_strategy,
    st.integers(1, 5),
    st.sampled_from([0.1, 0.5, 1.0, 100.0]),
    st.integers(0, 2**32 - 1),
)
def test_dirichlet_partition_disjoint_covering_deterministic(
    labels: list[int], members: int, alpha: float, seed: int
) -> None:
    try:
        part = partition_dirichlet(labels, members, alpha, seed, min_samples=2)
    except UsageError as exc:  # a very skewed draw may be impossible; it must say so
        assert "no Dirichlet" in exc.message or "cannot give" in exc.message
        return
    _check_cover(part.parts, len(labels))
    assert min(map(len, part.parts)) >= 2
    assert partition_dirichlet(labels, members, alpha, seed, min_samples=2).parts == part.parts


def test_dirichlet_skews_labels_and_iid_does_not() -> None:
    labels = [i % 10 for i in range(2000)]
    skewed = partition_dirichlet(labels, 10, 0.1, seed=1).label_counts()
    even = partition_iid(labels, 10, seed=1).label_counts()
    assert min(len(c) for c in skewed) < 10
    assert all(len(c) == 10 for c in even)


def test_stratified_holdout() -> None:
    labels = [0] * 50 + [1] * 30
    kept, held = stratified_holdout(labels, 0.2, seed=3)
    assert sorted(kept + held) == list(range(80))
    assert sum(labels[i] == 0 for i in held) == 10 and len(held) == 16


def test_split_csv_writes_verbatim_rows(tmp_path: Path) -> None:
    src = tmp_path / "d.csv"
    src.write_text("x,label\n" + "".join(f"{i}.5,{i % 3}\n" for i in range(30)), encoding="utf-8")
    report = split_csv(src, 3, seed=9, dirichlet=1.0, out_dir=tmp_path / "out")
    assert [f.name for f in report.files] == ["member-01.csv", "member-02.csv", "member-03.csv"]
    lines = [ln for f in report.files for ln in f.read_text().splitlines()[1:]]
    assert sorted(lines) == sorted(src.read_text().splitlines()[1:])
    assert sum(sum(c.values()) for c in report.label_counts) == 30
    assert member_file_name(99, 100) == "member-100.csv"


def test_split_refusals(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="between 1 and"):
        partition_iid([0, 1], 0, seed=1)
    with pytest.raises(UsageError, match="cannot split 2 rows among 3"):
        partition_iid([0, 1], 3, seed=1)
    with pytest.raises(UsageError, match="alpha"):
        partition_dirichlet([0, 1, 2], 1, 0.0, seed=1)
