"""The shipped example: one file in two places, valid once filled, approvals fitted to members."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bcfl_cli.consortium import parse_config
from bcfl_cli.consortium.example import example_text, filled_example
from bcfl_cli.errors import UsageError
from tests.consortium.helpers import test_did

REPO = Path(__file__).resolve().parents[2]


def test_packaged_example_is_the_repository_example():
    assert (REPO / "examples" / "consortium.toml").read_text(encoding="utf-8") == example_text()


def test_unfilled_example_is_toml_but_names_placeholder_dids():
    data = tomllib.loads(example_text())
    with pytest.raises(UsageError, match=r"members\[0\]\.did: not an Ed25519 did:key"):
        parse_config(data, "consortium.toml")


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7])
def test_filled_example_is_valid(n):
    members = [(f"m{i}", test_did(f"m{i}")) for i in range(n)]
    text = filled_example(members)
    config = parse_config(tomllib.loads(text), "filled")
    assert [(m.name, m.did) for m in config.members] == members
    assert config.admission_approvals == n // 2 + 1
    assert "# The model is fixed by the genesis" in text  # the comments survive


def test_filled_example_refuses_odd_names():
    with pytest.raises(UsageError, match="member name"):
        filled_example([('a"b', test_did("x"))])
    with pytest.raises(UsageError, match="at least one member"):
        filled_example([])
