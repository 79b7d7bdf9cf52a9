"""What users of gh, kubectl and Flower's CLI expect of any command line: --version, a root
--home, flags shown as flags, JSON errors under --json, readable status cells."""

from __future__ import annotations

import json
import os
from pathlib import Path

from typer.testing import CliRunner

from bcfl_cli.cli.app import app, bcfl_version
from bcfl_cli.cli.status_cmd import _ago, _cell
from tests.cli.test_train_cli import make_consortium_home

runner = CliRunner()


def _all_commands(prefix: list[str], command: object) -> list[list[str]]:
    out = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        out += _all_commands([*prefix, name], sub)
    return out


def test_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout.strip() == f"bcfl {bcfl_version()}"
    assert bcfl_version() != "unknown"


def test_home_before_the_subcommand(tmp_path: Path) -> None:
    home = make_consortium_home(tmp_path)
    before = os.environ.get("BCFL_HOME")
    result = runner.invoke(app, ["--home", str(home.root), "log", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["height"] == 0
    assert os.environ.get("BCFL_HOME") == before  # put back when the command ends
    # a subcommand's own --home wins over the root one
    other = runner.invoke(
        app, ["--home", str(tmp_path / "nowhere"), "log", "--json", "--home", str(home.root)]
    )
    assert other.exit_code == 0, other.output


def test_no_flag_is_shown_with_a_type() -> None:
    from typer.main import get_command

    for path in _all_commands([], get_command(app)):
        result = runner.invoke(app, [*path, "--help"], terminal_width=120)
        assert result.exit_code == 0, path
        assert "<bool>" not in result.stdout, (path, result.stdout)


def test_errors_are_json_under_json(tmp_path: Path) -> None:
    result = runner.invoke(app, ["--home", str(tmp_path / "empty"), "status", "--json"])
    assert result.exit_code == 1
    error = json.loads(result.stdout)["error"]
    assert error["exit_code"] == 1 and "no node recorded" in error["message"]
    assert error["hint"]
    plain = runner.invoke(app, ["--home", str(tmp_path / "empty"), "status"])
    assert plain.exit_code == 1 and plain.stdout == ""


def test_status_cells() -> None:
    assert _cell(None) == "-" and _cell(7) == "7"
    now = 1_800_000_000_000
    assert _ago(None, now) == "never"
    assert _ago(now - 4_200, now) == "4 s ago"
    assert _ago(now - 600_000, now) == "10 min ago"
    assert _ago(now - 3 * 3_600_000, now) == "3 h ago"


def test_every_command_has_examples_that_parse() -> None:
    """Each leaf command's --help ends with examples, and every example names options that
    exist (the check tests/test_readme.py makes for the README)."""
    import shlex

    from typer.main import get_command

    from tests.test_readme import _resolve

    root = get_command(app)
    leaves = [p for p in _all_commands([], root) if p and not _is_group_path(root, p)]
    assert len(leaves) >= 15
    for path in leaves:
        command = root
        for name in path:
            command = command.commands[name]  # type: ignore[attr-defined]
        epilog = command.epilog or ""
        assert "Examples:" in epilog, path
        for line in epilog.split("Examples:\n", 1)[1].splitlines():
            tokens = shlex.split(line.strip())
            found, rest = _resolve(tokens)
            assert found.name == command.name and tokens[1 : 1 + len(path)] == path, (path, line)
            options = {o for p in found.params for o in (*p.opts, *p.secondary_opts)}
            for token in rest:
                if token.startswith("--"):
                    assert token.split("=", 1)[0] in options, (path, line, token)


def _is_group_path(root: object, path: list[str]) -> bool:
    command = root
    for name in path:
        command = command.commands[name]  # type: ignore[attr-defined]
    return isinstance(getattr(command, "commands", None), dict)
