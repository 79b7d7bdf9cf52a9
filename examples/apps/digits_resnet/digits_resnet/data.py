"""The example's data: scikit-learn's 1,797 8x8 digits (read from its package data, no
download), a stratified test set, and a non-IID Dirichlet split of the rest among members.

Run ``python -m digits_resnet.data OUT --members 4`` to write ``OUT/member-01.npz`` ... and
``OUT/test.npz``: pixels scaled from 0..16 to [0, 1], as ``features`` ``[N, 64]`` float32 and
``labels`` ``[N]`` int64, the arrays bcfl's ``.npz`` loader reads.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import numpy as np

TEST_FRACTION = 0.2


def digits() -> tuple[np.ndarray, np.ndarray]:
    """(features [1797, 64] float32 in [0, 1], labels [1797] int64)."""
    from sklearn.datasets import load_digits  # the optional extra bcfl[examples]

    bunch = load_digits()
    return (bunch.data / 16.0).astype(np.float32), bunch.target.astype(np.int64)


def test_split(labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train indices, test indices): ``TEST_FRACTION`` of each class held out."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        cut = round(len(idx) * TEST_FRACTION)
        test.append(idx[:cut])
        train.append(idx[cut:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def dirichlet_split(
    labels: np.ndarray, members: int, alpha: float, seed: int, min_rows: int = 20
) -> list[np.ndarray]:
    """Indices per member: each class's rows shared by Dirichlet(alpha) proportions (smaller
    alpha: more skewed), redrawn until every member has at least ``min_rows``."""
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(members)]
        for c in np.unique(labels):
            idx = rng.permutation(np.flatnonzero(labels == c))
            shares = rng.dirichlet([alpha] * members)
            cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(int)
            for m, chunk in enumerate(np.split(idx, cuts)):
                parts[m].extend(int(i) for i in chunk)
        if min(len(p) for p in parts) >= min_rows:
            return [np.sort(np.array(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"no Dirichlet({alpha}) split gives {members} members {min_rows} rows each")


def write_partitions(
    out: Path, members: int, *, alpha: float = 0.5, seed: int = 0
) -> tuple[list[Path], Path]:
    """Write the members' ``.npz`` files and the common test set; returns their paths."""
    features, labels = digits()
    train, test = test_split(labels, seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for m, idx in enumerate(dirichlet_split(labels[train], members, alpha, seed), start=1):
        path = out / f"member-{m:02d}.npz"
        np.savez(path, features=features[train][idx], labels=labels[train][idx])
        paths.append(path)
    test_path = out / "test.npz"
    np.savez(test_path, features=features[test], labels=labels[test])
    return paths, test_path


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--members", type=int, default=4)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    paths, test = write_partitions(args.out, args.members, alpha=args.alpha, seed=args.seed)
    for path in [*paths, test]:
        with np.load(path) as f:
            counts = np.bincount(f["labels"], minlength=10).tolist()
        print(f"{path}: {sum(counts)} rows, per class {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
