"""Shared fixtures: member homes with a real (fast-KDF) identity, and a hermetic environment."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bcfl_cli.home import Home
from bcfl_cli.identity import Identity, generate_identity
from tests.lanes import LaneError, lane_rank, xdist_group

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
    """Groups for pytest-xdist's ``--dist loadgroup`` (``make test`` runs two workers; the
    rules are in tests/lanes.py): every real consortium test (marked ``network``) in one group,
    so that they run one after another on one worker, never two consortia at once; the
    ``network`` tests that start at most one node process (also marked ``lone_node``) in a
    group of their own, which the other worker runs first, beside the consortia; every other
    test with the tests of its file, so that a module's fixtures are built once. Under xdist
    the consortia come first: they are the longest group, and the other worker takes the rest
    meanwhile (``--no-loadscope-reorder`` keeps that order). Without xdist nothing changes."""
    for item in items:
        try:
            group = xdist_group(item.nodeid, _marker_names(item))
        except LaneError as exc:
            raise pytest.UsageError(str(exc)) from None
        item.add_marker(pytest.mark.xdist_group(group))
    if hasattr(config, "workerinput"):  # an xdist worker: every worker sorts the same way
        items.sort(key=lambda item: lane_rank(_marker_names(item)))


def _marker_names(item: pytest.Item) -> set[str]:
    return {name for name in ("network", "lone_node") if item.get_closest_marker(name)}


@pytest.fixture(autouse=True)
def _lone_node_guard(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``lone_node`` test runs beside the consortia (tests/lanes.py): it fails if it starts
    a node of a ``LocalConsortium`` while another of that consortium's nodes runs."""
    if request.node.get_closest_marker("lone_node") is None:
        return
    from bcfl_cli.demo.launcher import LocalConsortium

    original = LocalConsortium.start

    def start(self: LocalConsortium, name: str, *args: Any, **kwargs: Any) -> Any:
        running = sorted(n for n, m in self.members.items() if n != name and m.running)
        assert not running, f"a lone_node test starts {name}'s node beside {running}"
        return original(self, name, *args, **kwargs)

    monkeypatch.setattr(LocalConsortium, "start", start)


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
