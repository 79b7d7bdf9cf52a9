"""Options shared by every command, so that they read the same everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

HomeOption = Annotated[
    Path | None,
    typer.Option(
        "--home",
        help="Member home (keys, store, blobs). Default: $BCFL_HOME or the user data dir.",
        envvar="BCFL_HOME",
        show_default=False,
    ),
]
StoreUrlOption = Annotated[
    str | None,
    typer.Option(
        "--store-url",
        metavar="URL",
        help="Keep the ledger in this PostgreSQL database (a SQLAlchemy URL, see the "
        "examples) instead of HOME/chain.sqlite; keep its password in ~/.pgpass, not in the "
        "URL. Recorded in the home: later commands find it.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
#: The genesis' ``contract.update_dtype`` for the consortia ``demo`` and ``simulate`` create.
UpdateDtypeOption = Annotated[
    str,
    typer.Option(
        "--update-dtype",
        help="float32, bfloat16 or float16: the dtype of every update, fixed by the genesis "
        "(half the bytes; the aggregate stays exact and float32).",
    ),
]
AppFolderOption = Annotated[
    Path | None,
    typer.Option(
        "--app",
        metavar="FOLDER",
        help="Import the consortium's model app from FOLDER (on the import path for this load "
        "only) instead of the installed packages; checked against the genesis pin either way. "
        "Not needed for the builtin models.",
        envvar="BCFL_APP",
        file_okay=False,
        show_default=False,
    ),
]


def examples(*lines: str) -> str:
    """A command's ``--help`` epilog: one example per line, kept as written (tests parse them)."""
    return "\b\nExamples:\n" + "\n".join(f"  {line}" for line in lines)
