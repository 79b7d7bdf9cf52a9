"""A pinned app through ``bcfl train`` and through real nodes (``bcfl demo --app``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bcfl_cli.cli.app import app
from bcfl_cli.consortium.setup import init_consortium
from bcfl_cli.demo.launcher import bcfl_command
from bcfl_cli.home import Home
from tests.apps.test_app_pin import T, app_consortium, tiny_copy
from tests.cli.test_train_cli import PART

runner = CliRunner()
REPO = Path(__file__).resolve().parents[2]


def app_home(tmp_path: Path, folder: Path) -> Home:
    home = Home.resolve(tmp_path / "home")
    init_consortium(home, app_consortium(tmp_path, folder), time_ms=T, app_folder=folder)
    return home


def train(home: Home, folder: Path, *args: str):  # type: ignore[no-untyped-def]
    return runner.invoke(
        app,
        ["train", "--data", str(PART), "--home", str(home.root), "--app", str(folder), *args],
    )


def test_bcfl_train_runs_the_pinned_app_reproducibly(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    home = app_home(tmp_path, folder)
    first = train(home, folder, "--seed", "5", "--json")
    assert first.exit_code == 0, first.output
    side = json.loads(first.output)
    assert side["local"]["app"] == "tiny_app:app"
    assert side["metrics"]["steps"] and "eval_accuracy" in side["metrics"]
    again = train(home, folder, "--seed", "5", "--json", "--force")
    assert json.loads(again.output)["blob"] == side["blob"]


def test_bcfl_train_refuses_an_app_one_byte_off_its_pin_naming_the_file(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    home = app_home(tmp_path, folder)
    source = folder / "tiny_app" / "__init__.py"
    data = bytearray(source.read_bytes())
    data[-2] ^= 0x01  # one byte; the copy is refused before any of it is imported
    source.write_bytes(bytes(data))
    out = train(home, folder)
    assert out.exit_code == 1
    assert "does not match the genesis pin: tiny_app/__init__.py (changed)" in out.output
    assert not (home.root / "updates").exists()


def test_bcfl_train_without_the_app_says_how_to_install_it(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    home = app_home(tmp_path, folder)
    out = runner.invoke(app, ["train", "--data", str(PART), "--home", str(home.root)])
    assert out.exit_code == 1
    assert "not installed" in out.output and "--app" in out.output


@pytest.mark.network  # `bcfl demo`: real nodes on loopback
@pytest.mark.timeout(400)
def test_real_nodes_train_the_app_and_a_member_without_it_verifies(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("BCFL_APP", None)
    keep = tmp_path / "demo"
    done = subprocess.run(
        [
            *bcfl_command(),
            "demo",
            "--app",
            str(folder),
            "--rounds",
            "2",
            "--seed",
            "1",
            "--keep",
            str(keep),
            "--json",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=360,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert all(node["verify"]["ok"] for node in result["nodes"])
    # a member without the app: the app's folder is gone and nothing can import it
    (folder / "tiny_app" / "__init__.py").unlink()
    home = str(keep / "homes" / "bob")
    check = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from bcfl_cli.cli.app import app\n"
        f"out = CliRunner().invoke(app, ['verify-chain', '--deep', '--json', '--home', {home!r}])\n"
        "print(out.output)\n"
        "assert 'tiny_app' not in sys.modules\n"
        "sys.exit(out.exit_code)\n"
    )
    verified = subprocess.run(
        [sys.executable, "-c", check],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert verified.returncode == 0, verified.stdout + verified.stderr
    report = json.loads(verified.stdout)
    assert report["ok"] and report["deep"]


def test_a_node_with_a_changed_app_refuses_to_start_training(tmp_path: Path) -> None:
    folder = tiny_copy(tmp_path)
    home = app_home(tmp_path, folder)
    (folder / "tiny_app" / "extra.py").write_text("x = 1\n")
    out = runner.invoke(
        app,
        [
            "node",
            "--home",
            str(home.root),
            "--train",
            str(PART),
            "--app",
            str(folder),
            "--listen",
            "127.0.0.1:1",
        ],
    )
    assert out.exit_code == 1
    assert "tiny_app/extra.py (not in the pin)" in out.output
