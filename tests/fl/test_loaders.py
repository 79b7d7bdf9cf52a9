"""Local data in every format members hold: same Dataset out, every refusal names the place."""

from __future__ import annotations

import builtins
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.loaders import data_format, load_dataset, load_image_folder, load_npz
from bcfl_cli.fl.loaders.parquet import load_parquet


# --- dispatch ---------------------------------------------------------------------------------
def test_format_from_path(tmp_path: Path) -> None:
    assert data_format(tmp_path) == "images"
    assert data_format(tmp_path / "a.CSV") == "csv"
    assert data_format(tmp_path / "a.npz") == "npz"
    assert data_format(tmp_path / "a.pq") == "parquet"
    with pytest.raises(UsageError, match=r"unknown data format '\.xlsx'"):
        data_format(tmp_path / "a.xlsx")


def test_missing_path_is_named(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such data file or folder"):
        load_dataset(tmp_path / "nope.npz")


def test_csv_goes_through_the_csv_reader(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_text("a,label\n1,0\nx,1\n", encoding="utf-8")
    with pytest.raises(UsageError, match=r"line 3, column 'a': 'x' is not a number"):
        load_dataset(path)


# --- npz --------------------------------------------------------------------------------------
def test_npz_round_trip_and_fit_check(tmp_path: Path) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=np.arange(12, dtype=np.float32).reshape(3, 2, 2), y=np.array([0, 2, 1]))
    ds = load_dataset(path, num_classes=3, input_shape=[1, 2, 2])
    assert ds.features.shape == (3, 4) and ds.labels.tolist() == [0, 2, 1]
    with pytest.raises(UsageError, match="label 2 is out of range"):
        load_dataset(path, num_classes=2, input_shape=[4])
    with pytest.raises(UsageError, match="4 feature columns, the consortium model expects 5"):
        load_dataset(path, input_shape=[5])


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 3))}, r"no labels array"),
        ({"y": np.zeros(2)}, r"no features array"),
        ({"x": np.zeros((2, 3)), "y": np.array([0.0, 1.5])}, r"item 1: label 1.5 is not a class"),
        ({"x": np.zeros((2, 3)), "y": np.array([0, -1])}, r"item 1: label -1 is not a class"),
        ({"x": np.array([[0.0], [np.nan]]), "y": np.array([0, 1])}, r"item 1: a feature is not"),
        ({"x": np.array([[0.0], [1e39]]), "y": np.array([0, 1])}, r"item 1: a feature is not"),
        ({"x": np.zeros((3, 3)), "y": np.array([0, 1])}, r"2 labels but features of shape"),
        ({"x": np.array(["a", "b"]), "y": np.array([0, 1])}, r"array 'x' has dtype <U1"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0)}, r"no data"),
    ],
)
def test_npz_refusals_name_the_item(
    tmp_path: Path, arrays: dict[str, np.ndarray], message: str
) -> None:
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match=message) as caught:
        load_npz(path)
    assert str(path) in caught.value.message


def test_npz_never_unpickles(tmp_path: Path) -> None:
    path = tmp_path / "pickle.npz"
    np.savez(path, x=np.array([{"a": 1}, {"b": 2}], dtype=object), y=np.array([0, 1]))
    with pytest.raises(UsageError, match="not a readable .npz archive"):
        load_npz(path)


def test_npz_not_a_zip(tmp_path: Path) -> None:
    path = tmp_path / "junk.npz"
    path.write_bytes(b"not a zip at all")
    with pytest.raises(UsageError, match="not a readable .npz archive"):
        load_npz(path)


@settings(max_examples=30, deadline=None)
@given(
    features=hnp.arrays(
        np.float32,
        st.tuples(st.integers(1, 8), st.integers(1, 5)),
        elements=st.floats(-1e6, 1e6, width=32),
    ),
    data=st.data(),
)
def test_npz_any_finite_data_round_trips(
    tmp_path_factory: pytest.TempPathFactory, features: np.ndarray, data: st.DataObject
) -> None:
    labels = np.array(
        data.draw(st.lists(st.integers(0, 9), min_size=len(features), max_size=len(features)))
    )
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, features=features, labels=labels)
    ds = load_npz(path)
    assert torch.equal(ds.features, torch.from_numpy(features))
    assert ds.labels.tolist() == labels.tolist()


# --- parquet ----------------------------------------------------------------------------------
def _parquet(path: Path, columns: dict[str, list[Any]]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table(columns), path)
    return path


def test_parquet_like_a_csv(tmp_path: Path) -> None:
    path = _parquet(tmp_path / "d.parquet", {"a": [1.0, 3.0], "label": [0, 1], "b": [2.5, -4]})
    ds = load_dataset(path, num_classes=2, input_shape=[2])
    assert ds.features.tolist() == [[1.0, 2.5], [3.0, -4.0]]
    assert ds.labels.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"a": [1.0, None], "label": [0, 1]}, r"row 1, column 'a': missing value"),
        ({"a": [1.0, 2.0], "label": [0, 7.5]}, r"row 1: label 7.5 is not a class"),
        ({"a": ["x", "y"], "label": [0, 1]}, r"column 'a' has type string"),
        ({"a": [1.0, 2.0], "cls": [0, 1]}, r"no label column 'label'"),
        ({"label": [0, 1]}, r"no feature columns"),
        ({"a": [1.0, float("inf")], "label": [0, 1]}, r"row 1: a feature is not finite"),
    ],
)
def test_parquet_refusals_name_row_and_column(
    tmp_path: Path, columns: dict[str, list[Any]], message: str
) -> None:
    path = _parquet(tmp_path / "bad.parquet", columns)
    with pytest.raises(UsageError, match=message):
        load_parquet(path)


def test_parquet_garbage(tmp_path: Path) -> None:
    path = tmp_path / "junk.parquet"
    path.write_bytes(b"PAR1 nothing")
    with pytest.raises(UsageError, match="not a readable Parquet file"):
        load_parquet(path)


def test_parquet_without_pyarrow_names_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = _parquet(tmp_path / "d.parquet", {"a": [1.0], "label": [0]})
    real_import = builtins.__import__

    def no_pyarrow(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("pyarrow"):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    for name in [m for m in sys.modules if m.startswith("pyarrow")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(UsageError, match="needs pyarrow") as caught:
        load_parquet(path)
    assert caught.value.hint is not None and "bcfl[parquet]" in caught.value.hint


# --- images -----------------------------------------------------------------------------------
def _image(path: Path, size: tuple[int, int] = (4, 3), mode: str = "L", value: int = 255) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def test_image_folder_by_class_index(tmp_path: Path) -> None:
    _image(tmp_path / "0" / "a.png", value=0)
    _image(tmp_path / "2" / "b.png", value=255)
    _image(tmp_path / "2" / "c.jpg", mode="RGB")
    ds = load_dataset(tmp_path, num_classes=3, input_shape=[1, 3, 4])
    assert ds.features.shape == (3, 12)
    assert ds.labels.tolist() == [0, 2, 2]  # a member without class 1 keeps class 2's index
    assert float(ds.features[0].max()) == 0.0 and float(ds.features[1].min()) == 1.0
    rgb = load_image_folder(tmp_path, [3, 3, 4])
    assert rgb.features.shape == (3, 36)


@pytest.mark.parametrize(
    ("layout", "shape", "message"),
    [
        ({"cats/a.png": (4, 3)}, [1, 3, 4], r"class folder 'cats' is not a class index"),
        ({"0/a.png": (5, 3)}, [1, 3, 4], r"a.png: image is 5x3 \(width x height\), the "),
        ({"0/a.png": (4, 3), "0/b.png": (4, 4)}, None, r"b.png: image is 4x4"),
        ({"0/notes.txt": None}, [1, 3, 4], r"notes.txt: not an image file"),
        ({"0/fake.png": None}, [1, 3, 4], r"fake.png: not a readable image"),
        ({}, [1, 3, 4], r"no images"),
        ({"0/a.png": (4, 3)}, [4], r"needs a model input_shape \[channels, height, width\]"),
        ({"0/a.png": (4, 3)}, [2, 3, 4], r"a.png: 2 channels; images take 1 or 3"),
    ],
)
def test_image_folder_refusals_name_the_file(
    tmp_path: Path,
    layout: dict[str, tuple[int, int] | None],
    shape: list[int] | None,
    message: str,
) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    for name, size in layout.items():
        if size is None:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(b"hello")
        else:
            _image(root / name, size)
    with pytest.raises(UsageError, match=message):
        load_image_folder(root, shape)


def test_image_file_at_top_level_refused(tmp_path: Path) -> None:
    _image(tmp_path / "a.png")
    with pytest.raises(UsageError, match="expected only class folders"):
        load_image_folder(tmp_path)


def test_image_over_the_pixel_bound_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pillow's decompression-bomb guard, at bcfl's bound: refused, not decoded."""
    from bcfl_cli.fl.loaders import images

    _image(tmp_path / "0" / "big.png", size=(4, 3))
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 11)
    with pytest.raises(UsageError, match=r"big.png: more than 11 pixels"):
        load_image_folder(tmp_path)
    monkeypatch.setattr(images, "MAX_IMAGE_PIXELS", 12)
    assert len(load_image_folder(tmp_path)) == 1
