"""The commented example consortium file, optionally filled with real members' dids.

The file ships inside the package (``example.toml``) so an installed ``bcfl`` can print it; the
copy in ``examples/`` is kept identical by a test.
"""

from __future__ import annotations

import re
from importlib import resources

from bcfl_cli.consortium.config import MEMBER_NAME_RE
from bcfl_cli.errors import UsageError


def example_text() -> str:
    return resources.files("bcfl_cli.consortium").joinpath("example.toml").read_text("utf-8")


def filled_example(members: list[tuple[str, str]]) -> str:
    """The example with its [[members]] replaced by ``members`` (name, did), all trainers and
    validators of power 1, and approvals set to a majority of them."""
    if not members:
        raise UsageError("give at least one member")
    for name, _ in members:
        if not MEMBER_NAME_RE.match(name):
            raise UsageError(f"member name {name!r}: use letters, digits, '.', '_' or '-'")
    lines = example_text().split("\n")
    start = lines.index("[[members]]")
    end = lines.index("[model]")
    while lines[end - 1].startswith("#"):
        end -= 1
    blocks = [
        f'[[members]]\nname = "{name}"\ndid = "{did}"\nroles = ["trainer", "validator"]\n'
        f"power = 1\n"
        for name, did in members
    ]
    text = "\n".join([*lines[:start], "\n".join(blocks), *lines[end:]])
    majority = len(members) // 2 + 1
    for key in ("admission_approvals", "removal_approvals"):
        text = re.sub(rf"(?m)^{key} = \d+$", f"{key} = {majority}", text)
    return text


def with_model_section(text: str, section: str) -> str:
    """``text`` (the example) with its builtin ``[model]`` table, and the comment above it,
    replaced by ``section`` (a ``[model.app]`` pin from ``bcfl_cli.apps.project.pin_toml``)."""
    lines = text.split("\n")
    start = lines.index("[model]")
    while lines[start - 1].startswith("#"):
        start -= 1
    end = lines.index("[training]")
    return "\n".join([*lines[:start], section.rstrip("\n"), "", *lines[end:]])
