"""Seeded partitions of one CSV into per-member files, to try a consortium on any labelled data.

Two schemes, the usual ones in the FL literature:

* IID: a seeded random permutation cut into ``members`` nearly equal parts.
* Dirichlet(alpha) over labels (Hsu et al. 2019, "Measuring the effects of non-identical data
  distribution"): for every class, the share of its rows that goes to each member is drawn from
  Dir(alpha, ..., alpha); small alpha gives each member few classes. A draw that leaves a member
  with fewer than ``min_samples`` rows is thrown away and drawn again, as is customary, up to
  ``MAX_DRAWS`` times.

Rows are written back exactly as read (same text, same column order, original row order inside
each part), so a partition is a subset of the source file and nothing else. Draws use NumPy's
PCG64 ``Generator``; NumPy documents that its distributions may change between major versions,
which is why the shipped partitions are files rather than a recipe.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import Table, read_table

MAX_MEMBERS = 1000
MAX_DRAWS = 1000


@dataclass(frozen=True)
class Partition:
    """Row indices (into the source table, ascending) for each member."""

    parts: list[list[int]]
    labels: list[int]
    scheme: str

    def label_counts(self) -> list[dict[int, int]]:
        counts: list[dict[int, int]] = []
        for part in self.parts:
            member: dict[int, int] = {}
            for i in part:
                member[self.labels[i]] = member.get(self.labels[i], 0) + 1
            counts.append(dict(sorted(member.items())))
        return counts


def default_min_samples(rows: int, members: int) -> int:
    """At least 10 rows each where the data allows it, and never more than a fifth of a share."""
    return max(1, min(10, rows // (5 * members)))


def partition_iid(labels: list[int], members: int, seed: int) -> Partition:
    _check_members(len(labels), members)
    order = np.random.default_rng(seed).permutation(len(labels))
    parts = [sorted(int(i) for i in chunk) for chunk in np.array_split(order, members)]
    return Partition(parts, list(labels), "iid")


def partition_dirichlet(
    labels: list[int], members: int, alpha: float, seed: int, *, min_samples: int | None = None
) -> Partition:
    """Label-skewed split; resamples until every member has ``min_samples`` rows."""
    _check_members(len(labels), members)
    if not 0.0 < alpha <= 1e6:
        raise UsageError(f"--dirichlet alpha must be in (0, 1e6], got {alpha}")
    floor = default_min_samples(len(labels), members) if min_samples is None else min_samples
    if floor * members > len(labels):
        raise UsageError(
            f"cannot give {members} members {floor} rows each out of {len(labels)} rows"
        )
    rng = np.random.default_rng(seed)
    by_class: dict[int, np.ndarray] = {}
    array = np.asarray(labels)
    for label in sorted(set(labels)):
        by_class[label] = np.flatnonzero(array == label)
    for _ in range(MAX_DRAWS):
        parts: list[list[int]] = [[] for _ in range(members)]
        for rows in by_class.values():
            shuffled = rng.permutation(rows)
            shares = rng.dirichlet(np.full(members, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(shuffled)).astype(np.int64)
            for member, chunk in enumerate(np.split(shuffled, cuts)):
                parts[member].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= floor:
            return Partition([sorted(p) for p in parts], list(labels), f"dirichlet({alpha})")
    raise UsageError(
        f"no Dirichlet({alpha}) draw in {MAX_DRAWS} gave every member {floor} rows",
        hint="use a larger --dirichlet alpha, fewer --members or a smaller --min-samples",
    )


def _check_members(rows: int, members: int) -> None:
    if not 1 <= members <= MAX_MEMBERS:
        raise UsageError(f"--members must be between 1 and {MAX_MEMBERS}, got {members}")
    if members > rows:
        raise UsageError(f"cannot split {rows} rows among {members} members")


def member_file_name(index: int, members: int) -> str:
    """``member-01.csv`` ... with as many digits as the largest index needs (at least two)."""
    return f"member-{index + 1:0{max(2, len(str(members)))}d}.csv"


def write_table(table: Table, rows: list[int], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(table.header)
        for i in rows:
            writer.writerow(table.rows[i])


@dataclass(frozen=True)
class SplitReport:
    source: Path
    out_dir: Path
    scheme: str
    seed: int
    files: list[Path]
    label_counts: list[dict[int, int]]

    def to_json(self) -> dict[str, object]:
        return {
            "source": str(self.source),
            "out_dir": str(self.out_dir),
            "scheme": self.scheme,
            "seed": self.seed,
            "members": [
                {
                    "file": str(f),
                    "rows": sum(c.values()),
                    "labels": {str(k): v for k, v in c.items()},
                }
                for f, c in zip(self.files, self.label_counts, strict=True)
            ],
        }


def split_csv(
    source: Path,
    members: int,
    *,
    seed: int,
    dirichlet: float | None = None,
    label_column: str = "label",
    out_dir: Path | None = None,
    min_samples: int | None = None,
) -> SplitReport:
    """Split ``source`` into ``out_dir/member-XX.csv``: IID, or Dirichlet over labels."""
    table = read_table(Path(source), label_column)
    if dirichlet is None:
        partition = partition_iid(table.labels, members, seed)
    else:
        partition = partition_dirichlet(
            table.labels, members, dirichlet, seed, min_samples=min_samples
        )
    target = (
        out_dir
        if out_dir is not None
        else Path(source).with_suffix("").parent
        / (f"{Path(source).stem}-{members}-{'iid' if dirichlet is None else f'dir{dirichlet:g}'}")
    )
    files = []
    for index, rows in enumerate(partition.parts):
        path = target / member_file_name(index, members)
        write_table(table, rows, path)
        files.append(path)
    return SplitReport(
        Path(source), target, partition.scheme, seed, files, partition.label_counts()
    )


def stratified_holdout(
    labels: list[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """(kept, held out) row indices: ``round(fraction * n_c)`` rows of every class c held out."""
    if not 0.0 < fraction < 1.0:
        raise UsageError(f"holdout fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    array = np.asarray(labels)
    held: list[int] = []
    for label in sorted(set(labels)):
        rows = rng.permutation(np.flatnonzero(array == label))
        held.extend(int(i) for i in rows[: round(fraction * len(rows))])
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)
