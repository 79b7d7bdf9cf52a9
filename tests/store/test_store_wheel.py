"""The built wheel carries the migrations, and an installed bcfl creates and upgrades a store."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = """
import sys, pathlib
import bcfl_cli
from bcfl_cli.store import migrate
root = pathlib.Path(sys.argv[1]).resolve()
assert pathlib.Path(bcfl_cli.__file__).resolve().is_relative_to(root), bcfl_cli.__file__
assert migrate.migrations_dir() == root / "bcfl_cli" / "_migrations", migrate.migrations_dir()
from tests_factories import make_document, make_genesis, FOUR
from bcfl_cli.home import Home
from bcfl_cli.store.ledger import Ledger
home = Home.resolve(pathlib.Path(sys.argv[2]))
doc = make_document(FOUR, "ab" * 32)
Ledger.create(home, make_genesis(doc), doc).close()
with Ledger.open(home) as ledger:
    print("height", ledger.height, migrate.head_revision())
"""


def test_wheel_ships_migrations_and_creates_a_store(tmp_path):
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(ROOT)],
        check=True,
        timeout=300,
    )
    (wheel,) = out.glob("bcfl-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "site")
    assert "bcfl_cli/_migrations/env.py" in names
    assert "bcfl_cli/_migrations/versions/0001_ledger.py" in names
    assert "bcfl_cli/_migrations/versions/0002_tx_indexes.py" in names
    # the explorer's page is package data: an installed node serves it without the checkout
    for name in ("index.html", "explorer.js", "explorer.css"):
        assert f"bcfl_cli/node/explorer/static/{name}" in names, name
    factories = (ROOT / "tests" / "chain" / "factories.py").read_text()
    (tmp_path / "helpers").mkdir()
    (tmp_path / "helpers" / "tests_factories.py").write_text(factories)
    env = {**os.environ, "PYTHONPATH": f"{tmp_path / 'site'}{os.pathsep}{tmp_path / 'helpers'}"}
    result = subprocess.run(
        [sys.executable, "-P", "-c", _SCRIPT, str(tmp_path / "site"), str(tmp_path / "home")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("height 0 0002")
