"""docs/OPERATIONS.md documents only what exists: every `bcfl ...` in its shell blocks parses."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from tests.test_readme import _CALL, _is_group, _resolve

DOC = Path(__file__).resolve().parents[1] / "docs" / "OPERATIONS.md"
_BLOCK = re.compile(r"```(?:bash|sh|shell|console|ini)\n(.*?)```", re.S)


def _commands() -> list[str]:
    found: list[str] = []
    for block in _BLOCK.findall(DOC.read_text(encoding="utf-8")):
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = re.sub(r"^(\$\s+|ExecStart=\S*/)", "", line.strip())
            found += [m.strip() for m in _CALL.findall(line)]
    return found


def test_doc_has_bcfl_examples() -> None:
    assert len(_commands()) >= 10


@pytest.mark.parametrize("line", _commands())
def test_doc_command_exists(line: str) -> None:
    tokens = shlex.split(line)
    command, rest = _resolve(tokens)
    assert not _is_group(command), f"`{line}` names a group, not a command"
    options = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
    for token in rest:
        if token.startswith("--"):
            assert token.split("=", 1)[0] in options, f"`{line}`: no option {token}"
