"""The ``bcfl`` command: wires the command modules and turns BcflError into one clean line.

Each command module exposes ``register(app)``; adding a command group is one line below. The
error handling lives in the root group's ``invoke``, so that the installed command and
``typer.testing.CliRunner`` behave the same: one ``error:`` line, the error's exit code.

``bcfl_cli.cli.app.app`` is the whole command, every module registered on first access. The
installed ``bcfl`` (``main``) registers only the module of the command it runs when that
command is in ``LIGHT_COMMANDS``: ``bcfl verify-chain`` then does not import the node, its
HTTP clients and servers (about 0.3 CPU-s of a 0.9 CPU-s start, bench/README.md).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from bcfl_cli.errors import BcflError
from bcfl_cli.fl.allocator import prefer_huge_pages

#: Command modules under bcfl_cli.cli, registered in this order.
COMMAND_MODULES: tuple[str, ...] = (
    "identity_cmd",
    "init_cmd",
    "node_cmd",
    "join_cmd",
    "members_cmd",
    "tls_cmd",
    "submit_cmd",
    "status_cmd",
    "model_cmd",
    "train_cmd",
    "data_cmd",
    "app_cmd",
    "chain_cmds",
    "demo_cmd",
    "simulate_cmd",
)

_state = {"verbose": False}


def report_error(exc: BcflError, *, as_json: bool = False) -> None:
    """Print a BcflError as one line (plus its hint), with the traceback under --verbose.

    Under ``--json`` the error is also one JSON document on stdout, so a script that parses the
    command's output gets a verdict on failure too (the human line still goes to stderr).
    """
    if as_json:
        error = {"message": exc.message, "hint": exc.hint, "exit_code": exc.exit_code}
        sys.stdout.write(json.dumps({"error": error}, indent=2, sort_keys=True) + "\n")
        sys.stdout.flush()
    err = Console(stderr=True, emoji=False, highlight=False)
    if _state["verbose"]:
        err.print_exception(show_locals=False)
    err.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {escape(exc.hint)}", highlight=False, soft_wrap=True)


def _hide_flag_types(command: Any) -> None:
    """Show a boolean flag as ``--force``, not ``--force <bool>`` (Typer's rich help labels every
    option with its type, and a flag takes no value). Duck-typed: Typer vendors its own click."""
    for param in getattr(command, "params", ()):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""
    make_help = command.get_help_option

    def help_option(ctx: Any) -> Any:
        option = make_help(ctx)
        if option is not None and option.metavar is None:
            option.metavar = ""
        return option

    command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        _hide_flag_types(sub)


class _BcflGroup(TyperGroup):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _hide_flag_types(self)

    def get_params(self, ctx: Any) -> Any:
        params = super().get_params(ctx)
        for param in params:  # the completion options are added after __init__
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params

    def invoke(self, ctx: Any) -> Any:
        pending = [*getattr(ctx, "_protected_args", ()), *getattr(ctx, "args", ())]
        as_json = "--json" in pending
        try:
            return super().invoke(ctx)
        except BcflError as exc:
            report_error(exc, as_json=as_json)
            raise typer.Exit(exc.exit_code) from None


_app = typer.Typer(
    name="bcfl",
    cls=_BcflGroup,
    help="Federated learning for a permissioned consortium on a replicated, verifiable ledger.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals could hold key material
    add_completion=True,
)


def bcfl_version() -> str:
    try:
        return version("bcfl")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"bcfl {bcfl_version()}\n")
        raise typer.Exit()


@_app.callback()
def _root(
    ctx: typer.Context,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show tracebacks on errors.")
    ] = False,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home",
            help="Member home for every subcommand (same as the subcommand's --home or "
            "$BCFL_HOME; a subcommand's own --home wins).",
            show_default=False,
        ),
    ] = None,
    _version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    _state["verbose"] = verbose
    if home is not None:
        # Subcommands read --home with $BCFL_HOME as its fallback; the root option sets that
        # fallback for this one command and puts the old value back when it ends.
        previous = os.environ.get("BCFL_HOME")
        os.environ["BCFL_HOME"] = str(home)
        ctx.call_on_close(lambda: _restore_env("BCFL_HOME", previous))


def _restore_env(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value


#: Commands whose module alone serves them (a test checks each name against its module);
#: any other command, and ``bcfl`` without one, registers every module.
LIGHT_COMMANDS: dict[str, str] = {
    "verify-chain": "chain_cmds",
    "log": "chain_cmds",
    "inspect": "chain_cmds",
    # a node start then skips registering the other commands (join, submit, init, ...); most
    # of their modules a node imports anyway: ~0.1 CPU-s a start (bench/README.md, session 12)
    "node": "node_cmd",
}
#: Root options that take a value (``--home DIR``), to find the command after them.
_VALUED_ROOT_OPTIONS = frozenset({"--home"})
_registered: set[str] = set()


def _register(names: tuple[str, ...]) -> typer.Typer:
    for name in names:
        if name not in _registered:
            _registered.add(name)
            importlib.import_module(f"bcfl_cli.cli.{name}").register(_app)
    return _app


def modules_for(argv: list[str]) -> tuple[str, ...]:
    """The command modules that ``bcfl ARGV`` needs: the light command's own, or all."""
    args = iter(argv)
    for arg in args:
        if arg in _VALUED_ROOT_OPTIONS:
            next(args, None)
        elif not arg.startswith("-"):
            module = LIGHT_COMMANDS.get(arg)
            return (module,) if module is not None else COMMAND_MODULES
    return COMMAND_MODULES


def __getattr__(name: str) -> typer.Typer:
    """``app``: the whole command, every module registered (tests, ``python -m``)."""
    if name == "app":
        return _register(COMMAND_MODULES)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def main() -> None:
    """Console-script entry point (click's standalone mode: usage errors exit 2).

    Torch's CPU allocator is asked for huge pages first, before any command imports torch
    (``fl/allocator.py``: a training step's gradients then fault 2 MiB at a time)."""
    prefer_huge_pages()
    _register(modules_for(sys.argv[1:]))()
