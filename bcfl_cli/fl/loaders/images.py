"""A folder of images by class: ``ROOT/<class index>/<image>``, read with Pillow.

The class folder's name is the class index (``0``, ``1``, ...), not a name sorted into one:
members of a non-IID split hold different subsets of the classes, and sorting each member's
own folder names would give the same class a different index on each member. Images are
converted to the genesis' channels (1: greyscale, 3: RGB), must have its height and width,
and become ``[C*H*W]`` rows scaled to ``[0, 1]``.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from bcfl_cli.errors import UsageError
from bcfl_cli.fl.data import MAX_LABEL, Dataset
from bcfl_cli.fl.loaders._checks import dataset

#: Suffixes read as images (anything else in a class folder is refused, not skipped silently).
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
#: Bounds on an image folder: files, bytes of one file, pixels of one image (Pillow's
#: decompression-bomb guard is set to the same bound).
MAX_IMAGE_FILES = 1_000_000
MAX_IMAGE_BYTES = 64 * 1024 * 1024
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
_MODES = {1: "L", 3: "RGB"}


def _class_index(path: Path, folder: Path) -> int:
    name = folder.name
    if not name.isdigit() or int(name) > MAX_LABEL:
        raise UsageError(
            f"{path}: class folder {name!r} is not a class index 0..{MAX_LABEL}",
            hint="name each class folder by its class index: 0/, 1/, ...",
        )
    return int(name)


def _files(path: Path) -> list[tuple[Path, int]]:
    found: list[tuple[Path, int]] = []
    for folder in sorted(p for p in path.iterdir() if not p.name.startswith(".")):
        if not folder.is_dir():
            raise UsageError(f"{folder}: expected only class folders in {path}")
        label = _class_index(path, folder)
        for file in sorted(f for f in folder.iterdir() if not f.name.startswith(".")):
            if not file.is_file() or file.suffix.lower() not in IMAGE_SUFFIXES:
                raise UsageError(f"{file}: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))})")
            found.append((file, label))
            if len(found) > MAX_IMAGE_FILES:
                raise UsageError(f"{path}: more than {MAX_IMAGE_FILES} images")
    if not found:
        raise UsageError(f"{path}: no images (expected {path}/<class index>/<image>)")
    return found


def _read(file: Path, shape: list[int] | None) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    size = file.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise UsageError(f"{file}: {size} bytes is more than the {MAX_IMAGE_BYTES} byte limit")
    try:
        with warnings.catch_warnings():
            # Pillow warns past MAX_IMAGE_PIXELS and raises past twice that: refuse at the bound
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
            with Image.open(file) as image:
                channels = shape[0] if shape is not None else len(image.getbands())
                if channels not in _MODES:
                    raise UsageError(f"{file}: {channels} channels; images take 1 or 3")
                pixels = np.asarray(image.convert(_MODES[channels]), dtype=np.float32) / 255.0
    except UsageError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise UsageError(f"{file}: more than {MAX_IMAGE_PIXELS} pixels ({exc})") from exc
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise UsageError(f"{file}: not a readable image ({exc})") from exc
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if shape is not None and list(pixels.shape[1:]) != list(shape[1:]):
        raise UsageError(
            f"{file}: image is {pixels.shape[2]}x{pixels.shape[1]} (width x height), "
            f"the consortium model takes {shape[2]}x{shape[1]}"
        )
    return pixels


def load_image_folder(path: Path, input_shape: list[int] | None = None) -> Dataset:
    """Every image under ``path``'s class folders; with ``input_shape`` ``[C, H, W]`` each
    must have that height and width (converted to C channels), else all must match the
    first image's shape."""
    path = Path(path)
    if input_shape is not None and len(input_shape) != 3:
        raise UsageError(
            f"{path}: a folder of images needs a model input_shape [channels, height, width], "
            f"not {input_shape}"
        )
    files = _files(path)
    shape = input_shape
    rows: list[np.ndarray] = []
    for file, _ in files:
        pixels = _read(file, shape)
        if shape is None:
            shape = list(pixels.shape)
        rows.append(pixels)
    features = torch.from_numpy(np.stack(rows))
    labels = torch.tensor([label for _, label in files], dtype=torch.int64)
    return dataset(path, features, labels, "image")
