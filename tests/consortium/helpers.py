"""Consortium files for tests: the shipped example filled with deterministic members' dids."""

from __future__ import annotations

import hashlib
from pathlib import Path

import nacl.signing

from bcfl_cli.consortium.example import filled_example
from bcfl_cli.protocol.crypto import did_from_public_key


def test_did(name: str) -> str:
    seed = hashlib.sha256(b"bcfl-consortium-test:" + name.encode()).digest()
    return did_from_public_key(bytes(nacl.signing.SigningKey(seed).verify_key))


test_did.__test__ = False  # type: ignore[attr-defined]  # not a test, despite the name

NAMES = ("alice", "bob", "carol", "dave")


def example_toml(names: tuple[str, ...] = NAMES) -> str:
    return filled_example([(n, test_did(n)) for n in names])


def write_config(directory: Path, text: str | None = None, name: str = "consortium.toml") -> Path:
    path = directory / name
    path.write_text(example_toml() if text is None else text, encoding="utf-8")
    return path
