"""The arrows between chain and fl (docs/ARCHITECTURE.md): chain asks, fl implements.

``chain`` imports nothing of ``fl``; ``fl`` imports nothing of ``chain``, ``store`` or
``node`` (not even under ``TYPE_CHECKING``); and ``import bcfl_cli.chain`` loads no SQL, so the
rules stay usable where no store exists (model proofs).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "bcfl_cli"


def _imports(folder: str) -> list[tuple[str, str]]:
    found = []
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.append((path.relative_to(PACKAGE).as_posix(), node.module))
            elif isinstance(node, ast.Import):
                found += [(path.relative_to(PACKAGE).as_posix(), a.name) for a in node.names]
    return found


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        ("chain", ("bcfl_cli.fl",)),
        ("fl", ("bcfl_cli.chain", "bcfl_cli.store", "bcfl_cli.node")),
    ],
)
def test_no_import_runs_against_the_arrows(folder: str, forbidden: tuple[str, ...]) -> None:
    wrong = [
        (where, module)
        for where, module in _imports(folder)
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    ]
    assert wrong == []


def test_importing_the_chain_rules_loads_no_store() -> None:
    code = (
        "import sys, bcfl_cli.chain; "
        "print(sorted(m for m in sys.modules if m.startswith(('bcfl_cli.store', 'sqlalchemy'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "[]"
