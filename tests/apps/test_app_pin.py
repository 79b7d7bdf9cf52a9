"""The genesis pins a model app: the [model.app] section, its checks, and what stays as it was."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from bcfl_cli.apps.loader import load_app
from bcfl_cli.apps.project import pin_for, pin_toml, read_project
from bcfl_cli.chain.config import parse_document
from bcfl_cli.cli.app import app
from bcfl_cli.consortium.config import genesis_config_from_document, load_config
from bcfl_cli.consortium.example import with_model_section
from bcfl_cli.consortium.setup import init_consortium
from bcfl_cli.errors import AppError, UsageError
from bcfl_cli.home import Home
from bcfl_cli.protocol.manifest import manifest_hash
from bcfl_cli.protocol.spec import AppModelSpec, AppPin
from tests.consortium.helpers import example_toml, write_config

TINY = Path(__file__).resolve().parent / "tiny"
T = 1_700_000_000_000
runner = CliRunner()


def tiny_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(TINY, folder, ignore=shutil.ignore_patterns("__pycache__"))
    return folder


def app_consortium(tmp_path: Path, folder: Path) -> Path:
    pin = pin_for(read_project(folder))
    return write_config(tmp_path, with_model_section(example_toml(), pin_toml(pin)))


def test_a_consortium_file_pins_the_app_and_init_builds_its_weights(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    config = load_config(app_consortium(tmp_path, folder))
    assert isinstance(config.model, AppModelSpec)
    assert config.model.app.entry_point == "tiny_app:app"
    assert list(config.model.app.files) == ["tiny_app/__init__.py"]
    result = init_consortium(
        Home.resolve(tmp_path / "h"), tmp_path / "consortium.toml", time_ms=T, app_folder=folder
    )
    assert result.initial_model == config.model.app.initial_model
    assert result.document["model"]["app"]["manifest"] == config.model.app.manifest
    # one document, one consortium: the chain's parser and the founders' agree
    assert isinstance(parse_document(result.document).model, AppModelSpec)
    assert genesis_config_from_document(result.document)[0] == config


def test_init_refuses_a_file_pinning_a_missing_app(tmp_path: Path) -> None:
    path = app_consortium(tmp_path, tiny_copy(tmp_path))
    out = runner.invoke(app, ["init", str(path), "--home", str(tmp_path / "h")])
    assert out.exit_code == 1
    assert "the model app 'tiny_app:app' is not installed: no module 'tiny_app'" in out.output
    assert not (tmp_path / "h" / "chain.sqlite").exists()


def test_init_refuses_an_app_that_differs_from_its_pin(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    path = app_consortium(tmp_path, folder)
    source = folder / "tiny_app" / "__init__.py"
    source.write_text(source.read_text() + "\n")
    with pytest.raises(AppError, match=r"tiny_app/__init__\.py \(changed\)"):
        init_consortium(Home.resolve(tmp_path / "h"), path, time_ms=T, app_folder=folder)


def test_a_pinned_app_is_checked_before_any_of_its_code_runs(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    pin = pin_for(read_project(folder))
    marker = tmp_path / "ran"
    (folder / "tiny_app" / "__init__.py").write_text(
        f"open({str(marker)!r}, 'w').close()\n" + (folder / "tiny_app" / "__init__.py").read_text()
    )
    with pytest.raises(AppError, match="does not match the genesis pin"):
        load_app("tiny_app:app", folder, pin)
    assert not marker.exists()


def test_pin_fields_are_validated() -> None:
    good = {
        "entry_point": "a:b",
        "manifest": "0" * 64,
        "files": {"a.py": "1" * 64},
        "initial_model": "2" * 64,
    }
    for bad, message in [
        ({"entry_point": "a b"}, "module:object"),
        ({"files": {"../x.py": "1" * 64}}, "relative path"),
        ({"config": {"lr": 0.1}}, "float"),
        ({}, "manifest is not the SHA-256"),
    ]:
        with pytest.raises(ValueError, match=message):
            AppPin.model_validate({**good, **bad})


def test_the_toml_error_names_the_key(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    text = app_consortium(tmp_path, folder).read_text()
    path = write_config(tmp_path, text.replace('entry_point = "tiny_app:app"', 'entry_point = "x"'))
    with pytest.raises(UsageError, match=r"model\.app\.entry_point"):
        load_config(path)


def test_consortium_example_pins_the_app(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    out = runner.invoke(app, ["consortium", "example", "--app", str(folder)])
    assert out.exit_code == 0, out.output
    assert "[model.app]" in out.output and "architecture" not in out.output.split("[training]")[0]


def test_app_check_reports_sizes_and_the_pin(tmp_path: Path) -> None:
    import json

    sample = Path(__file__).resolve().parents[2] / "sample_data" / "digits-train.csv"
    out = runner.invoke(
        app, ["app", "check", str(tiny_copy(tmp_path)), "--data", str(sample), "--json"]
    )
    assert out.exit_code == 0, out.output
    found = json.loads(out.output)
    assert found["parameters"] == 64 * 16 + 16 + 16 * 10 + 10
    assert found["update_bytes"] > found["parameters"] * 4
    assert found["metrics"]["steps"] == "1"
    assert found["pin"]["manifest"] == found["manifest"]


def test_app_new_scaffolds_an_app_that_checks(tmp_path: Path) -> None:
    out = runner.invoke(app, ["app", "new", "my_model", "--dir", str(tmp_path)])
    assert out.exit_code == 0, out.output
    root = tmp_path / "my_model"
    for rel in (
        "pyproject.toml",
        "README.md",
        "my_model/app.py",
        "my_model/model.py",
        "my_model/data.py",
        "tests/test_app.py",
    ):
        assert (root / rel).is_file(), rel
    sample = Path(__file__).resolve().parents[2] / "sample_data" / "digits-train.csv"
    checked = runner.invoke(app, ["app", "check", str(root), "--data", str(sample)])
    assert checked.exit_code == 0, checked.output
    again = runner.invoke(app, ["app", "new", "my_model", "--dir", str(tmp_path)])
    assert again.exit_code == 2 and "already exists" in again.output


def test_an_app_named_like_a_loaded_module_is_refused_not_reloaded() -> None:
    import typer

    with pytest.raises(AppError, match="standard library"):
        load_app("json:loads")
    with pytest.raises(AppError, match="collides with the module 'typer'"):
        load_app("typer:Typer")
    assert typer.Typer is __import__("sys").modules["typer"].Typer  # still the same module


def test_a_builtin_genesis_keeps_the_hash_it_had_before_model_apps(tmp_path: Path) -> None:
    """The example file's genesis, as main built it before apps existed: existing consortium
    files and stores keep working because the builtin model is the builtin app, unchanged.
    (The file as it was then: with the 64 MiB blob cap line that issue 19 raised to 1 GiB.)"""
    text = example_toml().replace(
        "max_blob_bytes = 1073741824 # 1 GiB", "max_blob_bytes = 67108864   # 64 MiB", 1
    )
    result = init_consortium(Home.resolve(tmp_path / "h"), write_config(tmp_path, text), time_ms=T)
    assert result.genesis_hash == "980c3dc0b3e3b82b7c85d71fc254ec720f3c73d306605e8679214cb8cc8a8789"
    assert result.initial_model == (
        "d588cac6dd3c8d8a26ae42f96fcc9c7d1031de3e725ba12525fafa66b01de156"
    )
    assert "app" not in result.document["model"]


_leaf = st.one_of(st.booleans(), st.integers(-(2**62), 2**62), st.text(max_size=12))
_config = st.dictionaries(
    st.text(min_size=1, max_size=8),
    st.recursive(
        _leaf,
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.text(min_size=1, max_size=5), inner, max_size=3),
        max_leaves=8,
    ),
    max_size=5,
)


@given(_config)
def test_the_written_pin_reads_back_as_the_same_config(config: dict) -> None:  # type: ignore[type-arg]
    import tomllib

    pin = AppPin(
        entry_point="a.b:c",
        manifest=manifest_hash({"a/b.py": "1" * 64}),
        files={"a/b.py": "1" * 64},
        initial_model="2" * 64,
        config=config,
    )
    parsed = tomllib.loads(pin_toml(pin))["model"]["app"]
    assert AppPin.model_validate(parsed) == pin


def test_a_planted_pyc_beside_the_checked_source_is_never_run(tmp_path: Path) -> None:
    """A ``__pycache__`` entry whose header matches the source (same mtime and size) would be
    run by a plain import instead of the source; the loader compiles the hashed source."""
    import os
    import py_compile

    folder = tmp_path / "planted"
    package = folder / "planted_app"
    package.mkdir(parents=True)
    (folder / "pyproject.toml").write_text('[tool.bcfl.app]\nentry_point = "planted_app:app"\n')
    source = package / "__init__.py"
    honest = (
        "from torch import nn\n"
        "VALUE = 1\n"
        "class app:\n"
        "    @staticmethod\n"
        "    def build_model(config):\n"
        "        return nn.Linear(2, 2)\n"
    )
    source.write_text(honest.replace("VALUE = 1", "VALUE = 2"))
    stamp = 1_600_000_000
    os.utime(source, (stamp, stamp))
    py_compile.compile(str(source), doraise=True)  # __pycache__/__init__.cpython-*.pyc
    source.write_text(honest)  # the reviewed source: same size, same mtime as the planted pyc
    os.utime(source, (stamp, stamp))
    pin = pin_for(read_project(folder))
    loaded = load_app("planted_app:app", folder, pin)
    assert __import__("sys").modules["planted_app"].VALUE == 1
    assert loaded.manifest.files.keys() == {"planted_app/__init__.py"}


def test_init_refuses_an_app_whose_weights_are_not_the_pinned_ones(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    path = app_consortium(tmp_path, folder)
    pinned = load_config(path).model
    assert isinstance(pinned, AppModelSpec)
    path.write_text(path.read_text().replace(pinned.app.initial_model, "0" * 64))
    with pytest.raises(AppError, match="builds initial weights"):
        init_consortium(Home.resolve(tmp_path / "h"), path, time_ms=T, app_folder=folder)
