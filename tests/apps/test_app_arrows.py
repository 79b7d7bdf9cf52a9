"""Where apps sit (docs/ARCHITECTURE.md): nothing that checks or verifies the chain imports an
app or the app machinery, so a member without the app verifies everything; apps themselves
import no chain, store or node."""

from __future__ import annotations

import pytest

from tests.chain.test_arrows import _imports


@pytest.mark.parametrize(
    ("folder", "forbidden"),
    [
        *[
            (folder, ("bcfl_cli.apps",))
            for folder in ("protocol", "chain", "fl", "verify", "provenance", "store", "consensus")
        ],
        ("apps", ("bcfl_cli.chain", "bcfl_cli.store", "bcfl_cli.node", "bcfl_cli.verify")),
    ],
)
def test_no_import_runs_against_the_app_arrows(folder: str, forbidden: tuple[str, ...]) -> None:
    wrong = [
        (where, module)
        for where, module in _imports(folder)
        if any(module == f or module.startswith(f + ".") for f in forbidden)
    ]
    assert wrong == []
