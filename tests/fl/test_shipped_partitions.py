"""The shipped partitions are what the documented, seeded split makes, and nothing else."""

from __future__ import annotations

from pathlib import Path

import pytest

from bcfl_cli.fl.split import split_csv

DATA = Path(__file__).resolve().parents[2] / "sample_data"
SEED = 2024  # scripts/make_sample_data.py
SHIPPED = sorted(p for p in (DATA / "partitions").glob("*/*") if p.is_dir())


def test_every_dataset_has_4_and_10_member_splits() -> None:
    names = {(p.parent.name, p.name) for p in SHIPPED}
    for dataset in ("digits", "breast-cancer"):
        for members in (4, 10):
            assert {(dataset, f"{members}-iid"), (dataset, f"{members}-dir0.5")} <= names


@pytest.mark.parametrize("shipped", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_partition_is_the_seeded_split(shipped: Path, tmp_path: Path) -> None:
    dataset = shipped.parent.name
    members_text, scheme = shipped.name.split("-", 1)
    members = int(members_text)
    alpha = None if scheme == "iid" else float(scheme.removeprefix("dir"))
    split_csv(DATA / f"{dataset}-train.csv", members, seed=SEED, dirichlet=alpha, out_dir=tmp_path)
    files = sorted(shipped.glob("member-*.csv"))
    assert [f.name for f in files] == sorted(f.name for f in tmp_path.glob("member-*.csv"))
    for f in files:
        assert f.read_bytes() == (tmp_path / f.name).read_bytes(), f
    header, *train_rows = (DATA / f"{dataset}-train.csv").read_text().splitlines()
    rows: list[str] = []
    for f in files:
        head, *part = f.read_text().splitlines()
        assert head == header
        rows += part
    assert sorted(rows) == sorted(train_rows)  # disjoint parts that cover the training rows
