"""How sample_data/ was made (run once; the outputs are committed, this documents them).

The two datasets are the UCI ML repository's "Optical Recognition of Handwritten Digits" (the
8x8 test set, 1797 images) and "Breast Cancer Wisconsin (Diagnostic)" (569 cases), read from the
copies bundled inside the scikit-learn wheel (no download). scikit-learn is NOT a bcfl
dependency; to re-run::

    .venv/bin/pip install scikit-learn
    .venv/bin/python scripts/make_sample_data.py
    .venv/bin/pip uninstall -y scikit-learn

Steps, all seeded (SEED below):
1. write ``sample_data/<name>.csv``: features as in the source (digits: integer pixel counts
   0..16; breast cancer: the 30 real-valued measurements as given), then ``label``;
2. hold out a stratified 20% as ``sample_data/<name>-test.csv`` (the common test set for global
   accuracy), the other 80% as ``sample_data/<name>-train.csv``;
3. split the train file with ``bcfl_cli.fl.split`` (the code behind ``bcfl data split``) into
   ``sample_data/partitions/<name>/<n>-iid`` and ``<n>-dir0.5`` for each member count.
"""

from __future__ import annotations

import csv
from pathlib import Path

from sklearn.datasets import load_breast_cancer, load_digits

from bcfl_cli.fl.data import read_table
from bcfl_cli.fl.split import split_csv, stratified_holdout, write_table

SEED = 2024
TEST_FRACTION = 0.2
ROOT = Path(__file__).resolve().parent.parent / "sample_data"
PARTITIONS = {"digits": (4, 10), "breast-cancer": (4, 10)}


def _number(value: float) -> str:
    """Integers as integers, reals with the source's own shortest repr (no rounding)."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def write_source(name: str) -> Path:
    if name == "digits":
        bunch = load_digits()
        columns = [f"pixel_{r}_{c}" for r in range(8) for c in range(8)]
    else:
        bunch = load_breast_cancer()
        columns = [f.replace(" ", "_") for f in bunch.feature_names]
    path = ROOT / f"{name}.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow([*columns, "label"])
        for row, label in zip(bunch.data, bunch.target, strict=True):
            writer.writerow([*(_number(v) for v in row), int(label)])
    return path


def main() -> None:
    ROOT.mkdir(exist_ok=True)
    for name, member_counts in PARTITIONS.items():
        full = read_table(write_source(name))
        kept, held = stratified_holdout(full.labels, TEST_FRACTION, SEED)
        write_table(full, held, ROOT / f"{name}-test.csv")
        train_path = ROOT / f"{name}-train.csv"
        write_table(full, kept, train_path)
        for members in member_counts:
            for alpha in (None, 0.5):
                scheme = "iid" if alpha is None else f"dir{alpha:g}"
                out = ROOT / "partitions" / name / f"{members}-{scheme}"
                report = split_csv(train_path, members, seed=SEED, dirichlet=alpha, out_dir=out)
                sizes = [sum(c.values()) for c in report.label_counts]
                print(f"{name} {members} {scheme}: {sizes}")


if __name__ == "__main__":
    main()
