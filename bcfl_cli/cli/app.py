"""The ``bcfl`` command: wires the command modules and turns BcflError into one clean line.

Each command module exposes ``register(app)``; adding a command group is one line below.
"""

from __future__ import annotations

import importlib
import sys
from typing import Annotated

import typer
from rich.console import Console

from bcfl_cli.errors import BcflError

app = typer.Typer(
    name="bcfl",
    help="Federated learning for a permissioned consortium on a replicated, verifiable ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals could hold key material
    add_completion=False,
)

#: Command modules under bcfl_cli.cli, registered in this order.
COMMAND_MODULES: tuple[str, ...] = ()

_state = {"verbose": False}


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")
    ] = False,
) -> None:
    _state["verbose"] = verbose


def _register_all() -> None:
    for name in COMMAND_MODULES:
        module = importlib.import_module(f"bcfl_cli.cli.{name}")
        module.register(app)


_register_all()


def main() -> None:
    """Console-script entry point: one error line and its exit code instead of a traceback."""
    err = Console(stderr=True)
    try:
        app(standalone_mode=False)
    except BcflError as exc:
        if _state["verbose"]:
            err.print_exception(show_locals=False)
        err.print(f"[bold red]error:[/] {exc.message}", highlight=False)
        if exc.hint:
            err.print(f"[dim]hint:[/] {exc.hint}", highlight=False)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # click usage errors and the like
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        raise
