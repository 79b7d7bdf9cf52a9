"""``bcfl verify-chain`` registers only its own module: the installed command does not import
the node's HTTP stack to verify a store (bench/README.md), and still names every command."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from bcfl_cli.cli import app as cli_app
from bcfl_cli.cli.app import COMMAND_MODULES, LIGHT_COMMANDS, modules_for


def _names(app: typer.Typer) -> set[str]:
    return {c.name for c in app.registered_commands if c.name} | {
        g.name for g in app.registered_groups if g.name
    }


@pytest.mark.parametrize(("command", "module"), sorted(LIGHT_COMMANDS.items()))
def test_a_light_command_is_registered_by_its_module(command: str, module: str) -> None:
    alone = typer.Typer()
    __import__(f"bcfl_cli.cli.{module}", fromlist=["register"]).register(alone)
    assert command in _names(alone)
    assert module in COMMAND_MODULES


def test_every_light_command_is_in_the_whole_command() -> None:
    assert set(LIGHT_COMMANDS) <= _names(cli_app.app)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["verify-chain", "--home", "h"], ("chain_cmds",)),
        (["--home", "log", "verify-chain"], ("chain_cmds",)),  # "log" is --home's value
        (["--home=h", "-v", "inspect", "1"], ("chain_cmds",)),
        (["submit", "run"], COMMAND_MODULES),
        (["node", "--home", "h"], ("node_cmd",)),
        (["--home", "h", "node"], ("node_cmd",)),
        (["--home", "verify-chain"], COMMAND_MODULES),  # no command after the value
        ([], COMMAND_MODULES),
        (["--help"], COMMAND_MODULES),
    ],
)
def test_modules_for(argv: list[str], expected: tuple[str, ...]) -> None:
    assert modules_for(argv) == expected


_PROBE = """
import sys
watched = sys.argv[1].split(",")
sys.argv = ["bcfl", *sys.argv[2:]]
from bcfl_cli.cli.app import main
try:
    main()
except SystemExit:
    pass
print(sorted(m for m in watched if m in sys.modules))
"""


def _probe(watched: tuple[str, ...], *argv: str) -> subprocess.CompletedProcess[str]:
    """``bcfl ARGV`` in a fresh interpreter; its last line lists the ``watched`` modules it
    imported."""
    return subprocess.run(
        [sys.executable, "-c", _PROBE, ",".join(watched), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_verify_chain_starts_without_the_http_stack() -> None:
    done = _probe(("aiohttp", "httpx", "uvicorn", "starlette"), "verify-chain", "--help")
    assert "verify-chain" in done.stdout and "--deep" in done.stdout, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_a_node_starts_without_the_other_commands_modules() -> None:
    """``bcfl node`` registers only node_cmd: a node start skips the client SDK's command
    modules (join, submit, init, ...), which every node of the test suite paid (session 12)."""
    commands = ("bcfl_cli.cli.submit_cmd", "bcfl_cli.cli.join_cmd", "bcfl_cli.cli.init_cmd")
    done = _probe(commands, "node", "--help")
    assert "--listen" in done.stdout and "--peer" in done.stdout, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"
