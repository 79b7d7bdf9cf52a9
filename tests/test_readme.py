"""The README documents only what exists: every `bcfl ...` in its shell blocks must parse."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer

from bcfl_cli.cli.app import app

README = Path(__file__).resolve().parents[1] / "README.md"
_BLOCK = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
# `bcfl` at the start of a command: line start, or after ; && || | do then $(
_CALL = re.compile(r"(?:^|;|&&|\|\||\||\bdo\b|\bthen\b|\$\()\s*(bcfl\s[^;|&)#\n]*)")


def _commands() -> list[str]:
    found: list[str] = []
    for block in _BLOCK.findall(README.read_text(encoding="utf-8")):
        text = block.replace("\\\n", " ")  # join continuation lines
        for line in text.splitlines():
            line = re.sub(r"^\$\s+", "", line.strip())
            found += [m.strip() for m in _CALL.findall(line)]
    return found


def _is_group(command) -> bool:
    return isinstance(getattr(command, "commands", None), dict)


def _resolve(tokens: list[str]):
    """Walk the command tree (typer vendors its own click, so classes are duck-typed)."""
    command = typer.main.get_command(app)
    rest = tokens[1:]
    while _is_group(command) and rest and not rest[0].startswith("-"):
        sub = command.commands.get(rest[0])
        assert sub is not None, f"`{' '.join(tokens)}`: no command {rest[0]!r}"
        command, rest = sub, rest[1:]
    return command, rest


def test_readme_has_bcfl_examples():
    assert len(_commands()) >= 8


@pytest.mark.parametrize("line", _commands())
def test_readme_command_exists(line):
    tokens = shlex.split(line)
    command, rest = _resolve(tokens)
    assert not _is_group(command), f"`{line}` names a group, not a command"
    options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for token in rest:
        if token.startswith("--"):
            name = token.split("=", 1)[0]
            assert name in options, f"`{line}`: {command.name} has no option {name}"


def test_quick_start_is_exactly_two_commands():
    text = README.read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    (block,) = _BLOCK.findall(section)
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    ci = (README.parent / ".ci" / "run").read_text(encoding="utf-8")
    assert [
        line for line in ci.splitlines() if line and not line.startswith(("#", "set ", "cd "))
    ] == ["make test"]
