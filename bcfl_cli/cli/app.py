"""The ``bcfl`` command: wires the command modules and turns BcflError into one clean line.

Each command module exposes ``register(app)``; adding a command group is one line below. The
error handling lives in the root group's ``invoke``, so that the installed command and
``typer.testing.CliRunner`` behave the same: one ``error:`` line, the error's exit code.
"""

from __future__ import annotations

import importlib
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from bcfl_cli.errors import BcflError

#: Command modules under bcfl_cli.cli, registered in this order.
COMMAND_MODULES: tuple[str, ...] = (
    "identity_cmd",
    "init_cmd",
    "node_cmd",
    "join_cmd",
    "members_cmd",
    "submit_cmd",
    "status_cmd",
    "model_cmd",
    "train_cmd",
    "data_cmd",
    "chain_cmds",
    "demo_cmd",
)

_state = {"verbose": False}


def report_error(exc: BcflError) -> None:
    """Print a BcflError as one line (plus its hint), with the traceback under --verbose."""
    err = Console(stderr=True, emoji=False, highlight=False)
    if _state["verbose"]:
        err.print_exception(show_locals=False)
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)


class _BcflGroup(TyperGroup):
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except BcflError as exc:
            report_error(exc)
            raise typer.Exit(exc.exit_code) from None


app = typer.Typer(
    name="bcfl",
    cls=_BcflGroup,
    help="Federated learning for a permissioned consortium on a replicated, verifiable ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals could hold key material
    add_completion=False,
)


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
    """Console-script entry point (click's standalone mode: usage errors exit 2)."""
    app()
