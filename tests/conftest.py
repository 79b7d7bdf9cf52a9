"""Shared fixtures: member homes with a real (fast-KDF) identity, and a hermetic environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from bcfl_cli.home import Home
from bcfl_cli.identity import Identity, generate_identity

#: ``store_backend``, ``postgres_url``: the ledger's two backends (SQLite, PostgreSQL).
pytest_plugins = ["tests.store_backends"]

#: The passphrase of every identity made by ``make_home``.
PASSPHRASE = b"correct horse battery staple"


@dataclass(frozen=True)
class MemberHome:
    """A member's home and the identity stored in it (kept, so tests need not decrypt it)."""

    home: Home
    identity: Identity

    @property
    def root(self) -> Path:
        return self.home.root

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def did(self) -> str:
        return self.identity.did


MakeHome = Callable[..., MemberHome]


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Groups for pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers): every
    real multi-process test (marked ``network``) in one group, so that they run one after
    another on one worker as they always have, never two consortia at once; every other test
    with the tests of its file, so that a module's fixtures are built once. Under xdist the
    network group comes first: it is the longest, and the other worker takes the rest
    meanwhile (``--no-loadscope-reorder`` keeps that order). Without xdist nothing changes."""
    for item in items:
        network = item.get_closest_marker("network") is not None
        group = "network" if network else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts the same way
        items.sort(key=lambda item: item.get_closest_marker("network") is None)


@pytest.fixture(autouse=True)
def _hermetic_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads the developer's passphrase or writes into their real bcfl home."""
    monkeypatch.delenv("BCFL_PASSPHRASE", raising=False)
    monkeypatch.setenv("BCFL_HOME", str(tmp_path / "default-home"))


@pytest.fixture
def make_home(tmp_path: Path) -> MakeHome:
    """Factory: ``make_home("alice")`` -> a home under tmp_path holding alice's identity
    (interactive Argon2id limits, passphrase ``PASSPHRASE``; ~0.1 s each).
    """

    def factory(name: str = "alice") -> MemberHome:
        home = Home.resolve(tmp_path / "homes" / name).ensure()
        return MemberHome(home, generate_identity(home, name, PASSPHRASE, kdf="interactive"))

    return factory


@pytest.fixture
def passphrase_env(monkeypatch: pytest.MonkeyPatch) -> bytes:
    """Sets BCFL_PASSPHRASE (how scripts and CLI tests give the passphrase) to ``PASSPHRASE``."""
    monkeypatch.setenv("BCFL_PASSPHRASE", PASSPHRASE.decode())
    return PASSPHRASE
