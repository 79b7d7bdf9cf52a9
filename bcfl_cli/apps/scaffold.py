"""``bcfl app new NAME``: a working app to start from, like ``flwr new``.

The app it writes trains on the shipped digits sample as it stands (a 2-layer network, bcfl's
CSV loader, bcfl's training loop), so a newcomer can go from ``bcfl app new`` to a trained
consortium model before changing a line; each file says what to change for their own model.
"""

from __future__ import annotations

import keyword
import re
import sys
from pathlib import Path

from bcfl_cli.errors import UsageError

APP_NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}\Z")
_RESERVED = frozenset({"bcfl", "bcfl_cli", "torch", "numpy", "tests", "test"})

_PYPROJECT = """\
[project]
name = "__DIST__"
version = "0.1.0"
description = "A bcfl model app"
requires-python = ">=3.11"
dependencies = ["torch"]

[build-system]
requires = ["hatchling>=1.25"]
build-backend = "hatchling.build"

[tool.hatch.build.targets.wheel]
packages = ["__NAME__"]

[tool.pytest.ini_options]
pythonpath = ["."]

# What the consortium file pins (`bcfl consortium example --app .`): the entry point, and the
# config that build_model(config) and load_data(path, config) receive. No floats in config:
# write "0.5" and parse it in the app.
[tool.bcfl.app]
entry_point = "__NAME__.app:app"

[tool.bcfl.app.config]
features = 64          # feature columns of a data row (64 for sample_data/digits-*.csv)
classes = 10           # labels 0..classes-1
hidden = 32            # width of the hidden layer
seed = 0               # seeds the initial weights: every founder builds the same ones
label_column = "label"
"""

_INIT = '''"""__NAME__: a bcfl model app (see README.md)."""
'''

_APP = '''"""The entry point bcfl loads (``__NAME__.app:app``).

bcfl calls ``build_model(config)`` and ``load_data(path, config)``; training and evaluation are
bcfl's defaults (the training plan's optimizer, epochs, batch size, FedProx, DP-SGD). To use
your own loop, add ``train(model, data, plan, *, seed, device, progress)`` returning
``(trained_state_dict, num_samples, metrics)`` and ``evaluate(model, data)`` returning a dict
(see bcfl_cli/apps/api.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from __NAME__.data import load_rows
from __NAME__.model import Net


class App:
    @staticmethod
    def build_model(config: dict[str, Any]) -> nn.Module:
        return Net(config["features"], config["hidden"], config["classes"], seed=config["seed"])

    @staticmethod
    def load_data(path: Path, config: dict[str, Any]) -> Any:
        return load_rows(Path(path), config["label_column"])


app = App()
'''

_MODEL = '''"""The model: replace ``Net`` with your own ``torch.nn.Module``.

Rules bcfl checks: every weight (parameters and buffers) is float32, and the same config builds
the same initial weights on every machine (so seed them, as below).
"""

from __future__ import annotations

import torch
from torch import nn


class Net(nn.Module):
    def __init__(self, features: int, hidden: int, classes: int, *, seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.layers = nn.Sequential(
                nn.Linear(features, hidden), nn.ReLU(), nn.Linear(hidden, classes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # asinh squashes raw feature values of any scale without shared statistics
        return self.layers(torch.asinh(x))
'''

_DATA = '''"""This member's data: replace ``load_rows`` with your own loader.

bcfl's default training loop takes a ``Dataset`` (``features`` float32 [N, ...], ``labels``
int64 [N]); a loader returning anything else needs the app's own ``train`` and ``evaluate``.
Raise ``bcfl_cli.errors.UsageError`` naming the file and row for bad data.
"""

from __future__ import annotations

from pathlib import Path

from bcfl_cli.fl.data import Dataset, load_csv


def load_rows(path: Path, label_column: str) -> Dataset:
    return load_csv(path, label_column)
'''

_TEST = '''"""Fast checks of the app; run them with `pytest tests` in this folder."""

from __future__ import annotations

import tomllib
from pathlib import Path

import torch

from __NAME__.app import app

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["bcfl"]["app"]["config"]


def test_the_same_config_builds_the_same_weights() -> None:
    a, b = app.build_model(CONFIG).state_dict(), app.build_model(CONFIG).state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert all(t.dtype == torch.float32 for t in a.values())


def test_one_row_gives_one_score_per_class() -> None:
    out = app.build_model(CONFIG)(torch.zeros(3, CONFIG["features"]))
    assert out.shape == (3, CONFIG["classes"])
'''

_README = """\
# __NAME__: a bcfl model app

A model app is the code a consortium trains: bcfl builds the model from the config the genesis
pins, loads each member's own data with it, and trains with bcfl's loop (or the app's own).
Weights travel between members as safetensors; code never does. Every member installs this
folder from source they reviewed; a node whose copy differs by one byte refuses to train and
names the file.

Files:
- `__NAME__/model.py`: the network (`build_model(config)` builds it);
- `__NAME__/data.py`: the member's data loader;
- `__NAME__/app.py`: the entry point bcfl loads, `__NAME__.app:app`;
- `pyproject.toml`: `[tool.bcfl.app]`, the entry point and the config the genesis pins;
- `tests/test_app.py`: fast checks (`pytest tests`).

Try it on a sample, then pin it in a consortium file:

    bcfl app check __NAME__ --data sample_data/digits-train.csv
    bcfl consortium example --app __NAME__ --member alice=homes/alice ... --out consortium.toml

Then `bcfl init consortium.toml --app __NAME__`, and every member runs
`bcfl node --train PART.csv --app __NAME__` (or `pip install ./__NAME__` and drop `--app`).
Changing any file of `__NAME__/` changes the manifest: pin the new version in a new consortium.
"""


def new_app(name: str, parent: Path) -> list[Path]:
    """Write the app ``name`` under ``parent/name``; the files written."""
    if not APP_NAME_RE.match(name) or keyword.iskeyword(name):
        raise UsageError(
            f"app name {name!r}: use a Python package name (a-z, 0-9, _; starting with a letter)"
        )
    if name in _RESERVED or name in sys.stdlib_module_names:
        raise UsageError(f"app name {name!r} is taken by a module it would shadow; choose another")
    root = Path(parent) / name
    if root.exists():
        raise UsageError(f"{root} already exists", hint="choose another name or folder")
    files = {
        "pyproject.toml": _PYPROJECT,
        "README.md": _README,
        f"{name}/__init__.py": _INIT,
        f"{name}/app.py": _APP,
        f"{name}/model.py": _MODEL,
        f"{name}/data.py": _DATA,
        "tests/test_app.py": _TEST,
    }
    written = []
    for rel, template in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        text = template.replace("__DIST__", name.replace("_", "-")).replace("__NAME__", name)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
